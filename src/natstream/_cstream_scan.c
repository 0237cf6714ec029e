/* Scanner: the MSG/HMSG reading of _transport._parser.FastParser.parse, in C.
 *
 * scan(data, pos) reads messages from ``pos`` on and dispatches them: a message of a
 * lane (a subscription registered with add()) that the lane's fast path takes is
 * handled here; any other goes to the client's _dispatch, as the Python loop does.
 * It returns the position it stopped at, and why in ``stop``:
 *
 *   END      nothing more to read here (the rest, if any, is an incomplete line or
 *            message: ``wanted`` is the length it needs from that position, or 0)
 *   CONTROL  a line that is no MSG/HMSG starts at the position (ends at ``line_end``)
 *   MSG      _dispatch did not take the message just read: await
 *            client._process_msg(*taken)
 *   YIELD    a dispatched message set client.yield_soon
 *   SLOW     the MSG/HMSG line at the position has a number that is not plain
 *            digits: the Python loop reads that message (int() is the reference)
 *
 * A malformed MSG/HMSG line raises the ProtocolError given to the constructor, with
 * the Python loop's text.
 */
#include "_cstream.h"

enum { STOP_END = 0, STOP_CONTROL = 1, STOP_MSG = 2, STOP_YIELD = 3, STOP_SLOW = 4 };

#define MAX_DIGITS 18 /* what fits in a long long, always */
#define MAX_TOKENS 6

typedef struct {
    PyObject_HEAD
    PyObject *client;
    PyObject *error;
    PyObject *lanes; /* dict: sid -> AttemptCore */
    long long cached_sid;
    PyObject *cached; /* borrowed from lanes; NULL when unset */
    int stop;
    Py_ssize_t line_end;
    Py_ssize_t wanted;
    PyObject *taken;
    long long in_msgs;
    long long in_bytes;
} Scanner;

static inline int
is_space(unsigned char c)
{
    /* bytes.split()'s whitespace */
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

/* A token of plain ASCII digits (at most MAX_DIGITS); -1 for anything else. */
static long long
plain_number(const char *s, Py_ssize_t n)
{
    if (n <= 0 || n > MAX_DIGITS) {
        return -1;
    }
    long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < '0' || c > '9') {
            return -1;
        }
        v = v * 10 + (c - '0');
    }
    return v;
}

static Py_ssize_t
find_crlf(const char *buf, Py_ssize_t pos, Py_ssize_t size)
{
    while (pos + 1 < size) {
        const char *cr = memchr(buf + pos, '\r', size - pos - 1);
        if (cr == NULL) {
            return -1;
        }
        if (cr[1] == '\n') {
            return cr - buf;
        }
        pos = cr - buf + 1;
    }
    return -1;
}

static int
flush_stats(Scanner *self)
{
    /* client.stats["in_msgs"] += ..., ["in_bytes"] += ... for what lanes took. */
    if (self->in_msgs == 0) {
        return 0;
    }
    long long counts[2] = {self->in_msgs, self->in_bytes};
    PyObject *keys[2] = {ns_names.in_msgs, ns_names.in_bytes};
    self->in_msgs = self->in_bytes = 0;
    PyObject *stats = PyObject_GetAttr(self->client, ns_names.stats);
    if (stats == NULL) {
        return -1;
    }
    for (int k = 0; k < 2; k++) {
        PyObject *old = PyObject_GetItem(stats, keys[k]);
        PyObject *add = old == NULL ? NULL : PyLong_FromLongLong(counts[k]);
        PyObject *sum = add == NULL ? NULL : PyNumber_Add(old, add);
        int rc = sum == NULL ? -1 : PyObject_SetItem(stats, keys[k], sum);
        Py_XDECREF(old);
        Py_XDECREF(add);
        Py_XDECREF(sum);
        if (rc < 0) {
            Py_DECREF(stats);
            return -1;
        }
    }
    Py_DECREF(stats);
    return 0;
}

static PyObject *
lane_of(Scanner *self, long long sid)
{
    if (self->cached != NULL && self->cached_sid == sid) {
        return self->cached;
    }
    if (PyDict_GET_SIZE(self->lanes) == 0) {
        return NULL;
    }
    PyObject *key = PyLong_FromLongLong(sid);
    if (key == NULL) {
        return NULL;
    }
    PyObject *lane = PyDict_GetItemWithError(self->lanes, key);
    Py_DECREF(key);
    if (lane != NULL) {
        self->cached_sid = sid;
        self->cached = lane;
    }
    return lane;
}

/* A lane's fast path failed: as FastClient._dispatch's handler guard, re-raise
 * KeyboardInterrupt and SystemExit, log anything else (client._raw_failed). */
static int
lane_failed(Scanner *self)
{
    if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt) ||
        PyErr_ExceptionMatches(PyExc_SystemExit)) {
        return -1;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    PyObject *r = PyObject_CallMethodOneArg(self->client, ns_names.raw_failed, value);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

static PyObject *
malformed(Scanner *self)
{
    PyErr_SetString(self->error, "nats: malformed MSG");
    return NULL;
}

static PyObject *
Scanner_scan(Scanner *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan(data: bytes, pos: int)");
        return NULL;
    }
    PyObject *data = args[0];
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_INCREF(data);
    const char *buf = PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    self->stop = STOP_END;
    self->wanted = 0;
    Py_CLEAR(self->taken);
    PyObject *failed = NULL; /* not NULL once an exception is raised */
    PyObject *dispatch = NULL; /* client._dispatch, looked up once per scan */
    while (pos < size) {
        Py_ssize_t line_end = find_crlf(buf, pos, size);
        if (line_end < 0) {
            break;
        }
        Py_ssize_t op;
        int hmsg;
        if (size - pos >= 4 && memcmp(buf + pos, "MSG ", 4) == 0) {
            op = 4;
            hmsg = 0;
        }
        else if (size - pos >= 5 && memcmp(buf + pos, "HMSG ", 5) == 0) {
            op = 5;
            hmsg = 1;
        }
        else {
            self->stop = STOP_CONTROL;
            self->line_end = line_end;
            break;
        }
        const char *tok[MAX_TOKENS + 1];
        Py_ssize_t len[MAX_TOKENS + 1];
        int ntok = 0;
        for (Py_ssize_t k = pos + op; k < line_end;) {
            while (k < line_end && is_space((unsigned char)buf[k])) {
                k++;
            }
            if (k >= line_end) {
                break;
            }
            Py_ssize_t t = k;
            while (k < line_end && !is_space((unsigned char)buf[k])) {
                k++;
            }
            if (ntok == MAX_TOKENS) {
                ntok++; /* too many: malformed whatever the op */
                break;
            }
            tok[ntok] = buf + t;
            len[ntok] = k - t;
            ntok++;
        }
        int sid_i, reply_i = -1, hlen_i = -1, total_i;
        if (!hmsg && ntok == 3) {
            sid_i = 1, total_i = 2;
        }
        else if (!hmsg && ntok == 4) {
            sid_i = 1, reply_i = 2, total_i = 3;
        }
        else if (hmsg && ntok == 4) {
            sid_i = 1, hlen_i = 2, total_i = 3;
        }
        else if (hmsg && ntok == 5) {
            sid_i = 1, reply_i = 2, hlen_i = 3, total_i = 4;
        }
        else {
            malformed(self);
            failed = Py_None;
            goto out;
        }
        long long sid = plain_number(tok[sid_i], len[sid_i]);
        long long total = plain_number(tok[total_i], len[total_i]);
        long long hlen = hlen_i < 0 ? 0 : plain_number(tok[hlen_i], len[hlen_i]);
        if (sid < 0 || total < 0 || hlen < 0) {
            self->stop = STOP_SLOW;
            break;
        }
        if (hlen > total) {
            malformed(self);
            failed = Py_None;
            goto out;
        }
        Py_ssize_t start = line_end + 2;
        Py_ssize_t end = start + (Py_ssize_t)total;
        if (end + 2 > size) {
            self->wanted = end + 2 - pos; /* bytes this message needs from pos */
            break;
        }
        const char *reply = reply_i < 0 ? "" : tok[reply_i];
        Py_ssize_t reply_len = reply_i < 0 ? 0 : len[reply_i];
        pos = end + 2;
        PyObject *lane = lane_of(self, sid);
        if (lane == NULL && PyErr_Occurred()) {
            failed = Py_None;
            goto out;
        }
        if (lane != NULL) {
            Py_INCREF(lane);
            int rc = ns_lane_take((AttemptCore *)lane, reply, reply_len, buf + start,
                                  (Py_ssize_t)hlen, buf + start + hlen,
                                  (Py_ssize_t)(total - hlen));
            Py_DECREF(lane);
            if (rc != 0) {
                self->in_msgs += 1;
                self->in_bytes += total - hlen;
                if (rc < 0 && lane_failed(self) < 0) {
                    failed = Py_None;
                    goto out;
                }
                continue;
            }
        }
        /* FastClient._dispatch(sid, subject, reply, payload, headers) */
        if (flush_stats(self) < 0) {
            failed = Py_None;
            goto out;
        }
        PyObject *parts = Py_BuildValue(
            "(Ly#y#y#N)", sid, tok[0], len[0], reply, reply_len, buf + start + hlen,
            (Py_ssize_t)(total - hlen),
            hlen ? PyBytes_FromStringAndSize(buf + start, (Py_ssize_t)hlen) : Py_NewRef(Py_None));
        if (parts == NULL) {
            failed = Py_None;
            goto out;
        }
        if (dispatch == NULL &&
            (dispatch = PyObject_GetAttr(self->client, ns_names.dispatch)) == NULL) {
            Py_DECREF(parts);
            failed = Py_None;
            goto out;
        }
        PyObject *r = PyObject_Call(dispatch, parts, NULL);
        int took = r == NULL ? -1 : PyObject_IsTrue(r);
        Py_XDECREF(r);
        if (took < 0) {
            Py_DECREF(parts);
            failed = Py_None;
            goto out;
        }
        if (!took) {
            self->taken = parts;
            self->stop = STOP_MSG;
            break;
        }
        Py_DECREF(parts);
        PyObject *soon = PyObject_GetAttr(self->client, ns_names.yield_soon);
        int yield = soon == NULL ? -1 : PyObject_IsTrue(soon);
        Py_XDECREF(soon);
        if (yield < 0) {
            failed = Py_None;
            goto out;
        }
        if (yield) {
            self->stop = STOP_YIELD;
            break;
        }
    }
out:
    Py_DECREF(data);
    Py_XDECREF(dispatch);
    if (failed != NULL) {
        /* keep the error raised; still count what the lanes took */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (flush_stats(self) < 0) {
            PyErr_Clear();
        }
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    if (flush_stats(self) < 0) {
        return NULL;
    }
    return PyLong_FromSsize_t(pos);
}

static PyObject *
Scanner_add(Scanner *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyLong_Check(args[0]) || !PyObject_TypeCheck(args[1], &AttemptCoreType)) {
        PyErr_SetString(PyExc_TypeError, "add(sid: int, lane: AttemptCore)");
        return NULL;
    }
    self->cached = NULL;
    if (PyDict_SetItem(self->lanes, args[0], args[1]) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Scanner_remove(Scanner *self, PyObject *sid)
{
    self->cached = NULL;
    if (PyDict_DelItem(self->lanes, sid) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError)) {
            return NULL;
        }
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

static int
Scanner_init(Scanner *self, PyObject *args, PyObject *kwds)
{
    PyObject *client, *error;
    static char *kwlist[] = {"client", "error", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:Scanner", kwlist, &client, &error)) {
        return -1;
    }
    if (!PyType_Check(error) || !PyType_IsSubtype((PyTypeObject *)error,
                                                   (PyTypeObject *)PyExc_Exception)) {
        PyErr_SetString(PyExc_TypeError, "error must be an exception class");
        return -1;
    }
    PyObject *lanes = PyDict_New();
    if (lanes == NULL) {
        return -1;
    }
    Py_XSETREF(self->client, Py_NewRef(client));
    Py_XSETREF(self->error, Py_NewRef(error));
    Py_XSETREF(self->lanes, lanes);
    self->cached = NULL;
    return 0;
}

static int
Scanner_traverse(Scanner *self, visitproc visit, void *arg)
{
    Py_VISIT(self->client);
    Py_VISIT(self->error);
    Py_VISIT(self->lanes);
    Py_VISIT(self->taken);
    return 0;
}

static int
Scanner_clear(Scanner *self)
{
    self->cached = NULL;
    Py_CLEAR(self->client);
    Py_CLEAR(self->error);
    Py_CLEAR(self->lanes);
    Py_CLEAR(self->taken);
    return 0;
}

static void
Scanner_dealloc(Scanner *self)
{
    PyObject_GC_UnTrack(self);
    Scanner_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Scanner_get_taken(Scanner *self, void *closure)
{
    return Py_NewRef(self->taken ? self->taken : Py_None);
}

static PyGetSetDef Scanner_getset[] = {
    {"taken", (getter)Scanner_get_taken, NULL, "parts of the message for _process_msg", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Scanner_members[] = {
    {"stop", T_INT, offsetof(Scanner, stop), READONLY, "why the last scan stopped"},
    {"line_end", T_PYSSIZET, offsetof(Scanner, line_end), READONLY, NULL},
    {"wanted", T_PYSSIZET, offsetof(Scanner, wanted), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef Scanner_methods[] = {
    {"scan", (PyCFunction)(void (*)(void))Scanner_scan, METH_FASTCALL,
     "scan(data, pos)\n--\n\nRead and dispatch messages from pos on; the position reached."},
    {"add", (PyCFunction)(void (*)(void))Scanner_add, METH_FASTCALL,
     "add(sid, lane)\n--\n\nTake the messages of subscription ``sid`` through ``lane``."},
    {"remove", (PyCFunction)Scanner_remove, METH_O,
     "remove(sid)\n--\n\nForget subscription ``sid``'s lane (if any)."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "natstream._cstream.Scanner",
    .tp_doc = PyDoc_STR("Scanner(client, error): FastParser's message reading, in C."),
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scanner_init,
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_traverse = (traverseproc)Scanner_traverse,
    .tp_clear = (inquiry)Scanner_clear,
    .tp_members = Scanner_members,
    .tp_methods = Scanner_methods,
    .tp_getset = Scanner_getset,
};
