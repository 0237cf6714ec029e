/* CreditCore: the counters of a requester stream attempt, and the C twins of the
 * Credit/RequesterMachine methods the per-message paths call (on_data, on_taken,
 * on_delivered_many, ack_budget). _protocol._credit.Credit subclasses it; its
 * Python methods read and write the same fields under the same names.
 */
#include "_cstream.h"

/* state in TERMINAL: 1, 0, or -1 with an exception. */
static int
is_terminal(CreditCore *m)
{
    if (m->state == NULL) {
        PyErr_SetString(PyExc_AttributeError, "state");
        return -1;
    }
    if (ns_config.terminal == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "natstream._cstream is not configured");
        return -1;
    }
    return PySet_Contains(ns_config.terminal, m->state);
}

/* Whether an ack may go out now: v1, a control subject, not terminal (the guard of
 * the Python methods before _ack_headers). 1, 0, or -1. */
static int
may_ack(CreditCore *m)
{
    if (m->v1 == NULL || m->control_subject == NULL) {
        PyErr_SetString(PyExc_AttributeError, "v1 / control_subject");
        return -1;
    }
    int v1 = PyObject_IsTrue(m->v1);
    if (v1 <= 0) {
        return v1;
    }
    if (m->control_subject == Py_None) {
        return 0;
    }
    int terminal = is_terminal(m);
    return terminal < 0 ? -1 : !terminal;
}

static int
ack_now(CreditCore *m, PyObject **ack)
{
    *ack = PyObject_CallMethodOneArg((PyObject *)m, ns_names.ack_headers, ns_config.ctl_ack);
    return *ack == NULL ? -1 : 0;
}

static void
clear_delivered_pos(CreditCore *m)
{
    if (m->delivered_pos != Py_None) {
        Py_XSETREF(m->delivered_pos, Py_NewRef(Py_None));
    }
}

int
ns_on_data(CreditCore *m, double now, long long seq, long long size)
{
    /* RequesterMachine.on_data. Only a machine exactly in the state the Python
     * checks accept: anything else is the Python method's (which then says no). */
    if (seq != m->received_seq + 1 || seq > NS_MAX_SEQ || m->state == NULL ||
        m->state != ns_config.streaming || m->v1 != Py_True || m->control_subject == NULL ||
        m->control_subject == Py_None) {
        return 0;
    }
    long long in_flight = seq - m->acked_seq;
    if (in_flight > m->window_messages ||
        (in_flight > 1 && m->received_bytes + size - m->acked_bytes > m->window_bytes)) {
        return 0;
    }
    m->received_seq = seq;
    m->received_bytes += size;
    m->last_rx = now;
    if (size > m->largest) {
        m->largest = size;
    }
    return 1;
}

int
ns_on_taken(CreditCore *m, long long size, PyObject **ack)
{
    /* Credit.on_taken. */
    *ack = NULL;
    long long seq = ++m->delivered_seq;
    m->delivered_bytes += size;
    long long unacked = m->delivered_bytes - m->acked_bytes;
    clear_delivered_pos(m);
    if (seq - m->acked_seq < m->ack_every_msgs && unacked < m->ack_every_bytes) {
        if (seq == m->received_seq &&
            (m->heartbeat <= 0 || unacked + m->largest > m->window_bytes)) {
            m->ack_deferred = 1;
        }
        return 0;
    }
    int ok = may_ack(m);
    if (ok <= 0) {
        return ok;
    }
    return ack_now(m, ack);
}

/* Credit.on_delivered(None, size). */
static int
on_delivered_plain(CreditCore *m, long long size, PyObject **ack)
{
    *ack = NULL;
    long long seq = ++m->delivered_seq;
    m->delivered_bytes += size;
    clear_delivered_pos(m);
    if (seq - m->acked_seq < m->ack_every_msgs &&
        m->delivered_bytes - m->acked_bytes < m->ack_every_bytes && seq != m->received_seq) {
        return 0;
    }
    int ok = may_ack(m);
    if (ok <= 0) {
        return ok;
    }
    long long unacked = m->delivered_bytes - m->acked_bytes;
    if (seq - m->acked_seq >= m->ack_every_msgs || unacked >= m->ack_every_bytes ||
        (seq == m->received_seq &&
         (m->heartbeat <= 0 || unacked + m->largest > m->window_bytes))) {
        return ack_now(m, ack);
    }
    return 0;
}

int
ns_on_delivered_many(CreditCore *m, long long count, long long nbytes, PyObject **ack)
{
    /* Credit.on_delivered_many, for count >= 1. */
    m->delivered_seq += count - 1;
    m->delivered_bytes += nbytes;
    return on_delivered_plain(m, 0, ack);
}

void
ns_ack_budget(CreditCore *m, long long *msgs, long long *nbytes)
{
    /* Credit.ack_budget. */
    long long a = m->ack_every_msgs - (m->delivered_seq - m->acked_seq);
    long long b = m->ack_every_bytes - (m->delivered_bytes - m->acked_bytes);
    *msgs = a < 1 ? 1 : a;
    *nbytes = b < 1 ? 1 : b;
}

long long
ns_data_seq(const char *raw, Py_ssize_t len, const char *tail, Py_ssize_t tail_len)
{
    /* _frames.data_seq: "NATS/1.0\r\nNs-Seq: <digits>" then ``tail``, the first line
     * break after the digits being where ``tail`` starts. */
    static const char prefix[] = "NATS/1.0\r\nNs-Seq: ";
    const Py_ssize_t at = sizeof(prefix) - 1;
    if (len < at + tail_len || memcmp(raw, prefix, at) != 0 ||
        memcmp(raw + len - tail_len, tail, tail_len) != 0) {
        return 0;
    }
    Py_ssize_t end = len - tail_len;
    Py_ssize_t digits = end - at;
    if (digits <= 0 || digits > NS_MAX_SEQ_DIGITS) {
        return 0; /* b"".isdigit() is False; longer ones are refused */
    }
    /* The first b"\r\n" at or after ``at`` must be at ``end``: the digits hold no
     * line break, and the tail must start with one. */
    if (tail_len < 2 || raw[end] != '\r' || raw[end + 1] != '\n') {
        return 0;
    }
    unsigned long long value = 0;
    for (Py_ssize_t i = at; i < end; i++) {
        unsigned char c = (unsigned char)raw[i];
        if (c < '0' || c > '9') {
            return 0;
        }
        if (value > (unsigned long long)NS_MAX_SEQ) {
            return -1; /* beyond any sequence number: the caller refuses it */
        }
        value = value * 10 + (c - '0');
    }
    return value > (unsigned long long)NS_MAX_SEQ ? -1 : (long long)value;
}

/* ------------------------------------------------------------ the type */

static int
CreditCore_traverse(CreditCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->waiting_since);
    Py_VISIT(self->state);
    Py_VISIT(self->v1);
    Py_VISIT(self->control_subject);
    Py_VISIT(self->request_timeout);
    Py_VISIT(self->delivered_pos);
    return 0;
}

static int
CreditCore_clear(CreditCore *self)
{
    Py_CLEAR(self->waiting_since);
    Py_CLEAR(self->state);
    Py_CLEAR(self->v1);
    Py_CLEAR(self->control_subject);
    Py_CLEAR(self->request_timeout);
    Py_CLEAR(self->delivered_pos);
    return 0;
}

static void
CreditCore_dealloc(CreditCore *self)
{
    PyObject_GC_UnTrack(self);
    CreditCore_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef CreditCore_members[] = {
    {"window_messages", T_LONGLONG, offsetof(CreditCore, window_messages), 0, NULL},
    {"window_bytes", T_LONGLONG, offsetof(CreditCore, window_bytes), 0, NULL},
    {"received_seq", T_LONGLONG, offsetof(CreditCore, received_seq), 0, NULL},
    {"delivered_seq", T_LONGLONG, offsetof(CreditCore, delivered_seq), 0, NULL},
    {"delivered_bytes", T_LONGLONG, offsetof(CreditCore, delivered_bytes), 0, NULL},
    {"_received_bytes", T_LONGLONG, offsetof(CreditCore, received_bytes), 0, NULL},
    {"_largest", T_LONGLONG, offsetof(CreditCore, largest), 0, NULL},
    {"_acked_seq", T_LONGLONG, offsetof(CreditCore, acked_seq), 0, NULL},
    {"_acked_bytes", T_LONGLONG, offsetof(CreditCore, acked_bytes), 0, NULL},
    {"_ack_every_msgs", T_LONGLONG, offsetof(CreditCore, ack_every_msgs), 0, NULL},
    {"_ack_every_bytes", T_LONGLONG, offsetof(CreditCore, ack_every_bytes), 0, NULL},
    {"_last_tx", T_DOUBLE, offsetof(CreditCore, last_tx), 0, NULL},
    {"_last_rx", T_DOUBLE, offsetof(CreditCore, last_rx), 0, NULL},
    {"heartbeat", T_DOUBLE, offsetof(CreditCore, heartbeat), 0, NULL},
    {"ack_deferred", T_BOOL, offsetof(CreditCore, ack_deferred), 0, NULL},
    {"_waiting_since", T_OBJECT_EX, offsetof(CreditCore, waiting_since), 0, NULL},
    {"state", T_OBJECT_EX, offsetof(CreditCore, state), 0, NULL},
    {"v1", T_OBJECT_EX, offsetof(CreditCore, v1), 0, NULL},
    {"control_subject", T_OBJECT_EX, offsetof(CreditCore, control_subject), 0, NULL},
    {"request_timeout", T_OBJECT_EX, offsetof(CreditCore, request_timeout), 0, NULL},
    {"_delivered_pos", T_OBJECT_EX, offsetof(CreditCore, delivered_pos), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* copy and pickle: the instance's __dict__ and these fields, in the form the copy
 * module gives slotted objects ((dict, fields), set back with setattr). */
static PyObject *
CreditCore_getstate(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *fields = PyDict_New();
    if (fields == NULL) {
        return NULL;
    }
    for (PyMemberDef *def = CreditCore_members; def->name != NULL; def++) {
        PyObject *value = PyMember_GetOne((const char *)self, def);
        if (value == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
                Py_DECREF(fields);
                return NULL;
            }
            PyErr_Clear(); /* never set */
            continue;
        }
        int rc = PyDict_SetItemString(fields, def->name, value);
        Py_DECREF(value);
        if (rc < 0) {
            Py_DECREF(fields);
            return NULL;
        }
    }
    PyObject *dict = PyObject_GenericGetDict(self, NULL);
    if (dict == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            Py_DECREF(fields);
            return NULL;
        }
        PyErr_Clear(); /* no __dict__ */
        dict = Py_NewRef(Py_None);
    }
    return Py_BuildValue("(NN)", dict, fields);
}

static PyMethodDef CreditCore_methods[] = {
    {"__getstate__", CreditCore_getstate, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

PyTypeObject CreditCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "natstream._cstream.CreditCore",
    .tp_doc = PyDoc_STR("The counters of a requester machine, in C (see _protocol._credit)."),
    .tp_basicsize = sizeof(CreditCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)CreditCore_dealloc,
    .tp_traverse = (traverseproc)CreditCore_traverse,
    .tp_clear = (inquiry)CreditCore_clear,
    .tp_members = CreditCore_members,
    .tp_methods = CreditCore_methods,
};
