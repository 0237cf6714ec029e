/* The responder's per-reply path in C: fill_index runs a sync index handler and
 * queues its replies as _responder._kinds.Index.run_from and _sender.Sender.send_now
 * (v1 requesters) or Sender.emit (plain requesters) do; pack_items builds a packed
 * payload as _wire.pack_items.
 *
 * The replies of one call are written into one buffer and queued on the link at
 * once (Link.queue_batch), with the machine's and the sender's counters: between two
 * handler calls nothing else can queue on the link or read those counters (no other
 * task runs; the handler sees only its request), so this is what queuing them one
 * by one would leave.
 */
#include "_cstream.h"

enum { FILL_PYTHON = 0, FILL_PAUSE = 1, FILL_DONE = 2 };

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
} out_t;

static int
reserve(out_t *o, Py_ssize_t more)
{
    if (o->len + more <= o->cap) {
        return 0;
    }
    Py_ssize_t cap = o->cap ? o->cap : 1 << 16;
    while (cap < o->len + more) {
        cap *= 2;
    }
    char *grown = PyMem_Realloc(o->buf, cap);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->buf = grown;
    o->cap = cap;
    return 0;
}

static void
put(out_t *o, const char *s, Py_ssize_t n)
{
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

/* Decimal digits of v, as "%lld" writes them; by hand, as snprintf's format
 * parsing cost about a tenth of the responder's CPU with three numbers per reply. */
static void
put_num(out_t *o, long long v)
{
    char tmp[24];
    int i = (int)sizeof(tmp);
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) {
        tmp[--i] = '-';
    }
    put(o, tmp + i, (Py_ssize_t)sizeof(tmp) - i);
}

static int
digits(long long v)
{
    int n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

/* One reply's command: HPUB with Ns-Seq (and the tail) for a v1 requester, PUB for
 * a plain one (_frames.hpub_seq_command, hpub_seq_id_command, publish_command). */
static int
put_reply(out_t *o, PyObject *prefix, PyObject *tail, int v1, long long seq, PyObject *data)
{
    static const char head[] = "NATS/1.0\r\nNs-Seq: ";
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    Py_ssize_t plen = PyBytes_GET_SIZE(prefix);
    if (reserve(o, plen + size + 128 + (tail ? PyBytes_GET_SIZE(tail) : 0)) < 0) {
        return -1;
    }
    put(o, PyBytes_AS_STRING(prefix), plen);
    if (v1) {
        Py_ssize_t hlen = (sizeof(head) - 1) + digits(seq) +
                          (tail ? PyBytes_GET_SIZE(tail) : (Py_ssize_t)4);
        put_num(o, hlen);
        put(o, " ", 1);
        put_num(o, hlen + size);
        put(o, "\r\n", 2);
        put(o, head, sizeof(head) - 1);
        put_num(o, seq);
        if (tail) {
            put(o, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail));
        }
        else {
            put(o, "\r\n\r\n", 4);
        }
    }
    else {
        put_num(o, size);
        put(o, "\r\n", 2);
    }
    put(o, PyBytes_AS_STRING(data), size);
    put(o, "\r\n", 2);
    return 0;
}

static int
get_ll(PyObject *obj, PyObject *name, long long *out)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) {
        return -1;
    }
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int
set_ll(PyObject *obj, PyObject *name, long long value)
{
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL) {
        return -1;
    }
    int rc = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return rc;
}

PyObject *
ns_fill_index(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* Index.run_from's loop from ``index`` on, while each reply takes the fast
     * path: (PYTHON, index, result) hands the Python loop a result it must handle
     * (nothing done with it yet); (PAUSE, index, more) says the reply at ``index``
     * was queued and a pause is due (``more``: whether the handler said more);
     * (DONE, index, None): the handler said no more after ``index``. */
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "fill_index(sender, handler, request, index)");
        return NULL;
    }
    PyObject *sender = args[0], *handler = args[1], *request = args[2];
    long long index = PyLong_AsLongLong(args[3]);
    if (index == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *prefix = NULL, *tail = NULL, *machine = NULL, *link = NULL, *loop = NULL;
    PyObject *clock = NULL, *state = NULL, *v1o = NULL, *limits = NULL, *result = NULL;
    PyObject *out = NULL;
    out_t o = {NULL, 0, 0};
    long long limit = 0, sent = 0, sent_seq = 0, acked_seq = 0, sent_bytes = 0, acked_bytes = 0;
    long long wm = 0, wb = 0, pending = 0;
    long long pause_mask, pause_bytes, count = 0, nbytes = 0;
    double last_tx = 0;
    int fast = 0, v1 = 0, mono = 0, status = FILL_PYTHON, more = 0;

    if (ns_config.responder_open == NULL || ns_config.pause_mask == NULL ||
        ns_config.pause_bytes == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "natstream._cstream is not configured");
        return NULL;
    }
    pause_mask = PyLong_AsLongLong(ns_config.pause_mask);
    pause_bytes = PyLong_AsLongLong(ns_config.pause_bytes);
    if (PyErr_Occurred()) {
        return NULL;
    }
    /* What holds for the whole call: the link is writable, the stream open, and the
     * requester v1 with our prefix, or plain with a PUB prefix. */
    if ((machine = PyObject_GetAttr(sender, ns_names.machine)) == NULL ||
        (link = PyObject_GetAttr(sender, ns_names.link)) == NULL ||
        (state = PyObject_GetAttr(machine, ns_names.state)) == NULL ||
        (v1o = PyObject_GetAttr(machine, ns_names.v1)) == NULL) {
        goto error;
    }
    PyObject *writable = PyObject_GetAttr(link, ns_names.writable);
    if (writable == NULL) {
        goto error;
    }
    int can_write = writable == Py_True;
    Py_DECREF(writable);
    v1 = v1o == Py_True;
    if (can_write && state == ns_config.responder_open && (v1 || v1o == Py_False)) {
        prefix = PyObject_GetAttrString(sender, v1 ? "_prefix" : "_plain");
        tail = PyObject_GetAttr(sender, ns_names.tail);
        if (prefix == NULL || tail == NULL) {
            goto error;
        }
        fast = PyBytes_CheckExact(prefix) && (tail == Py_None || PyBytes_CheckExact(tail));
    }
    if (fast) {
        PyObject *mono_o;
        if (get_ll(sender, ns_names.limit, &limit) < 0 || get_ll(sender, ns_names.sent, &sent) < 0 ||
            get_ll(machine, ns_names.sent_seq, &sent_seq) < 0 ||
            get_ll(machine, ns_names.acked_seq, &acked_seq) < 0 ||
            get_ll(machine, ns_names.sent_bytes, &sent_bytes) < 0 ||
            get_ll(machine, ns_names.acked_bytes, &acked_bytes) < 0 ||
            (limits = PyObject_GetAttr(machine, ns_names.limits)) == NULL ||
            get_ll(limits, ns_names.window_messages, &wm) < 0 ||
            get_ll(limits, ns_names.window_bytes, &wb) < 0 ||
            (loop = PyObject_GetAttr(sender, ns_names.loop)) == NULL ||
            (mono_o = PyObject_GetAttr(sender, ns_names.mono)) == NULL) {
            goto error;
        }
        mono = mono_o == Py_True;
        Py_DECREF(mono_o);
        if (!mono && (clock = PyObject_GetAttr(loop, ns_names.time)) == NULL) {
            goto error;
        }
        PyObject *p = PyObject_CallMethodNoArgs(link, ns_names.pending_size);
        if (p == NULL) {
            goto error;
        }
        pending = PyLong_AsLongLong(p);
        Py_DECREF(p);
        if (pending == -1 && PyErr_Occurred()) {
            goto error;
        }
        /* The machine's last_tx: read once here and once when the replies are
         * queued (a clock read per reply cost a twentieth of the responder's CPU). */
        if (ns_now(clock, mono, &last_tx) < 0) {
            goto error;
        }
    }
    PyObject *tailb = (tail != NULL && tail != Py_None) ? tail : NULL;
    for (;;) {
        PyObject *idx = PyLong_FromLongLong(index);
        if (idx == NULL) {
            goto error;
        }
        result = PyObject_CallFunctionObjArgs(handler, request, idx, NULL);
        Py_DECREF(idx);
        if (result == NULL) {
            goto error;
        }
        if (!fast || !PyTuple_CheckExact(result) || PyTuple_GET_SIZE(result) != 3 ||
            PyTuple_GET_ITEM(result, 2) != Py_None) {
            status = FILL_PYTHON;
            break;
        }
        PyObject *data = PyTuple_GET_ITEM(result, 0);
        int pause = 0;
        if (data != Py_None) {
            if (!PyBytes_CheckExact(data)) {
                status = FILL_PYTHON;
                break;
            }
            long long size = PyBytes_GET_SIZE(data);
            if (size > limit) {
                status = FILL_PYTHON;
                break;
            }
            if (v1) {
                /* send_now: the default position, credit (send_next) */
                long long in_flight = sent_seq - acked_seq;
                if (index != sent_seq || in_flight >= wm ||
                    (in_flight && sent_bytes - acked_bytes + size > wb)) {
                    status = FILL_PYTHON;
                    break;
                }
            }
            sent_seq += 1;
            sent_bytes += size;
            if (put_reply(&o, prefix, tailb, v1, sent_seq, data) < 0) {
                sent_seq -= 1;
                sent_bytes -= size;
                goto error;
            }
            count += 1;
            nbytes += size;
            sent += 1;
            /* The pacing rule of Sender.send_now: see _sender.py. */
            pause = !(sent & pause_mask) ||
                    (!(sent & (pause_mask >> 1)) && pending + o.len > pause_bytes);
        }
        more = PyObject_IsTrue(PyTuple_GET_ITEM(result, 1));
        if (more < 0) {
            goto error;
        }
        Py_CLEAR(result);
        if (pause) {
            status = FILL_PAUSE;
            break;
        }
        if (!more) {
            status = FILL_DONE;
            break;
        }
        index += 1;
    }
    goto finish;
error:
    Py_CLEAR(result);
finish:
    /* Queue what was built and write the counters back, also when raising. */
    if (count) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (ns_now(clock, mono, &last_tx) < 0) {
            PyErr_Clear(); /* keep the time read before the first reply */
        }
        int rc = -1;
        PyObject *cmds = PyBytes_FromStringAndSize(o.buf, o.len);
        if (cmds != NULL) {
            PyObject *r = PyObject_CallMethod(link, "queue_batch", "OLL", cmds, count, nbytes);
            Py_DECREF(cmds);
            Py_XDECREF(r);
            PyObject *when = r == NULL ? NULL : PyFloat_FromDouble(last_tx);
            rc = (when == NULL || set_ll(machine, ns_names.sent_seq, sent_seq) < 0 ||
                  set_ll(machine, ns_names.sent_bytes, sent_bytes) < 0 ||
                  PyObject_SetAttr(machine, ns_names.last_tx, when) < 0 ||
                  set_ll(sender, ns_names.sent, sent) < 0)
                     ? -1
                     : 0;
            Py_XDECREF(when);
        }
        if (type != NULL) {
            PyErr_Restore(type, value, tb); /* the first error wins */
        }
        else if (rc < 0) {
            Py_CLEAR(result);
        }
    }
    if (!PyErr_Occurred()) {
        if (status == FILL_PYTHON) {
            out = Py_BuildValue("(iLO)", status, index, result);
        }
        else {
            out = Py_BuildValue("(iLO)", status, index, (status == FILL_PAUSE && more) ? Py_True
                                                        : Py_False);
        }
    }
    PyMem_Free(o.buf);
    Py_XDECREF(result);
    Py_XDECREF(prefix);
    Py_XDECREF(tail);
    Py_XDECREF(machine);
    Py_XDECREF(link);
    Py_XDECREF(loop);
    Py_XDECREF(clock);
    Py_XDECREF(state);
    Py_XDECREF(v1o);
    Py_XDECREF(limits);
    return out;
}

PyObject *
ns_pack_items(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* _wire.pack_items(items[start:stop]): each length (4 bytes, big-endian), then
     * the items. Items must be bytes (the sender converted them). */
    if (nargs != 3 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "pack_items(items: list, start, stop)");
        return NULL;
    }
    PyObject *items = args[0];
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t stop = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (start < 0 || stop > PyList_GET_SIZE(items) || start > stop) {
        PyErr_SetString(PyExc_IndexError, "pack_items: bad range");
        return NULL;
    }
    Py_ssize_t total = 4 * (stop - start);
    for (Py_ssize_t k = start; k < stop; k++) {
        PyObject *item = PyList_GET_ITEM(items, k);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "pack_items: items must be bytes");
            return NULL;
        }
        if (PyBytes_GET_SIZE(item) > 0xFFFFFFFFLL) {
            PyErr_SetString(PyExc_OverflowError, "pack_items: item too large");
            return NULL;
        }
        total += PyBytes_GET_SIZE(item);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) {
        return NULL;
    }
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    unsigned char *body = p + 4 * (stop - start);
    for (Py_ssize_t k = start; k < stop; k++) {
        PyObject *item = PyList_GET_ITEM(items, k);
        Py_ssize_t n = PyBytes_GET_SIZE(item);
        p[0] = (unsigned char)(n >> 24);
        p[1] = (unsigned char)(n >> 16);
        p[2] = (unsigned char)(n >> 8);
        p[3] = (unsigned char)n;
        p += 4;
        memcpy(body, PyBytes_AS_STRING(item), n);
        body += n;
    }
    return out;
}
