/* natstream._cstream: the per-message paths of streams, in C.
 *
 * Optional, like natstream._cwriter: without a compiler (or with
 * NATSTREAM_NO_EXTENSIONS set) natstream runs the same paths in Python. What is here:
 *
 *   CreditCore   the counters of a requester machine (base of _protocol._credit.Credit)
 *   AttemptCore  the fields of a requester attempt its receive path reads (base of
 *                _requester._attempt.Attempt), and that path: lane.c
 *   Scanner      the NATS protocol reader of _transport._parser.FastParser: scan.c
 *   fill_index   a sync index handler's replies, queued as HPUB/PUB commands: send.c
 *   pack_items   the payload of a packed message: send.c
 *   drain_pack   the items of a packed message, handed to a sync handler: lane.c
 *
 * Each mirrors a Python function named in its comment and is held to it by the
 * property tests (tests/protocol, tests/unit/test_fastparser.py, test_cstream.py).
 * The GIL is held throughout; see _cstream.h.
 */
#include "_cstream.h"
#include "_ctime.h"

ns_config_t ns_config;
ns_names_t ns_names;

int
ns_now(PyObject *clock, int mono, double *now)
{
    if (mono) {
        return ns_clock_seconds(CLOCK_MONOTONIC, now); /* as time.monotonic() */
    }
    PyObject *t = PyObject_CallNoArgs(clock);
    if (t == NULL) {
        return -1;
    }
    *now = PyFloat_AsDouble(t);
    Py_DECREF(t);
    return (*now == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* ------------------------------------------------------------ configure */

static int
set_ref(PyObject **slot, PyObject *value)
{
    Py_XINCREF(value);
    Py_XSETREF(*slot, value);
    return 0;
}

PyDoc_STRVAR(configure_doc,
"configure(what, value)\n--\n\n"
"Give the extension an object of the layer that owns it (set once at import):\n"
"``streaming``, ``terminal``, ``ctl_ack``, ``responder_open``, ``hold``,\n"
"``task_table``, ``task_swap``, ``pause_mask`` or ``pause_bytes``.");

static PyObject *
configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "configure(what: str, value)");
        return NULL;
    }
    static const struct {
        const char *name;
        size_t offset;
    } slots[] = {
        {"streaming", offsetof(ns_config_t, streaming)},
        {"terminal", offsetof(ns_config_t, terminal)},
        {"ctl_ack", offsetof(ns_config_t, ctl_ack)},
        {"responder_open", offsetof(ns_config_t, responder_open)},
        {"hold", offsetof(ns_config_t, hold)},
        {"task_table", offsetof(ns_config_t, task_table)},
        {"task_swap", offsetof(ns_config_t, task_swap)},
        {"pause_mask", offsetof(ns_config_t, pause_mask)},
        {"pause_bytes", offsetof(ns_config_t, pause_bytes)},
    };
    const char *what = PyUnicode_AsUTF8(args[0]);
    if (what == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < sizeof(slots) / sizeof(slots[0]); i++) {
        if (strcmp(what, slots[i].name) == 0) {
            PyObject *value = args[1] == Py_None ? NULL : args[1];
            set_ref((PyObject **)((char *)&ns_config + slots[i].offset), value);
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError, "nothing to configure called %R", args[0]);
    return NULL;
}

/* ------------------------------------------------------------ test hooks */

/* The C credit functions, callable from the property tests that hold them to the
 * Python methods (never used by natstream itself). */

static CreditCore *
as_credit(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &CreditCoreType)) {
        PyErr_SetString(PyExc_TypeError, "a machine on the C core is required");
        return NULL;
    }
    return (CreditCore *)obj;
}

static PyObject *
hook_on_data(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "on_data(machine, now, seq, size)");
        return NULL;
    }
    CreditCore *m = as_credit(args[0]);
    double now = PyFloat_AsDouble(args[1]);
    long long seq = PyLong_AsLongLong(args[2]);
    long long size = PyLong_AsLongLong(args[3]);
    if (m == NULL || PyErr_Occurred()) {
        return NULL;
    }
    return PyBool_FromLong(ns_on_data(m, now, seq, size));
}

static PyObject *
hook_on_taken(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "on_taken(machine, size)");
        return NULL;
    }
    CreditCore *m = as_credit(args[0]);
    long long size = PyLong_AsLongLong(args[1]);
    if (m == NULL || PyErr_Occurred()) {
        return NULL;
    }
    PyObject *ack = NULL;
    if (ns_on_taken(m, size, &ack) < 0) {
        return NULL;
    }
    return ack != NULL ? ack : Py_NewRef(Py_None);
}

static PyObject *
hook_on_delivered_many(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "on_delivered_many(machine, count, nbytes)");
        return NULL;
    }
    CreditCore *m = as_credit(args[0]);
    long long count = PyLong_AsLongLong(args[1]);
    long long nbytes = PyLong_AsLongLong(args[2]);
    if (m == NULL || PyErr_Occurred()) {
        return NULL;
    }
    PyObject *ack = NULL;
    if (count > 0 && ns_on_delivered_many(m, count, nbytes, &ack) < 0) {
        return NULL;
    }
    return ack != NULL ? ack : Py_NewRef(Py_None);
}

static PyObject *
hook_ack_budget(PyObject *self, PyObject *machine)
{
    CreditCore *m = as_credit(machine);
    if (m == NULL) {
        return NULL;
    }
    long long msgs, nbytes;
    ns_ack_budget(m, &msgs, &nbytes);
    return Py_BuildValue("(LL)", msgs, nbytes);
}

static PyObject *
hook_data_seq(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "data_seq(raw: bytes, tail: bytes)");
        return NULL;
    }
    return PyLong_FromLongLong(ns_data_seq(PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]),
                                           PyBytes_AS_STRING(args[1]), PyBytes_GET_SIZE(args[1])));
}

/* ------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL, configure_doc},
    {"fill_index", (PyCFunction)(void (*)(void))ns_fill_index, METH_FASTCALL,
     "fill_index(sender, handler, request, index)\n--\n\n"
     "Call a sync index handler from ``index`` on and queue its replies (see\n"
     "_responder._kinds.Index.run_from); returns (status, index, value)."},
    {"pack_items", (PyCFunction)(void (*)(void))ns_pack_items, METH_FASTCALL,
     "pack_items(items, start, stop)\n--\n\n"
     "_wire.pack_items(items[start:stop]) (items: a list of bytes)."},
    {"drain_pack", (PyCFunction)(void (*)(void))ns_drain_pack, METH_FASTCALL,
     "drain_pack(attempt, pack, handler)\n--\n\n"
     "Hand a pack's items to a sync handler as _delivery.drain_pack does, up to the\n"
     "first result it must await; returns (status, result)."},
    {"on_data", (PyCFunction)(void (*)(void))hook_on_data, METH_FASTCALL, NULL},
    {"on_taken", (PyCFunction)(void (*)(void))hook_on_taken, METH_FASTCALL, NULL},
    {"on_delivered_many", (PyCFunction)(void (*)(void))hook_on_delivered_many, METH_FASTCALL,
     NULL},
    {"ack_budget", hook_ack_budget, METH_O, NULL},
    {"data_seq", (PyCFunction)(void (*)(void))hook_data_seq, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static int
intern_names(void)
{
#define NAME(field, text)                                                                        \
    if ((ns_names.field = PyUnicode_InternFromString(text)) == NULL) {                           \
        return -1;                                                                               \
    }
    NAME(ack_headers, "_ack_headers")
    NAME(append, "append")
    NAME(arm, "_arm")
    NAME(defer_ack_check, "defer_ack_check")
    NAME(done, "done")
    NAME(handle, "_handle")
    NAME(send_ack, "send_ack")
    NAME(set_result, "set_result")
    NAME(stats, "stats")
    NAME(in_msgs, "in_msgs")
    NAME(in_bytes, "in_bytes")
    NAME(dispatch, "_dispatch")
    NAME(yield_soon, "yield_soon")
    NAME(raw_failed, "_raw_failed")
    NAME(prefix, "_prefix")
    NAME(tail, "_tail")
    NAME(limit, "limit")
    NAME(sent, "sent")
    NAME(machine, "machine")
    NAME(link, "link")
    NAME(loop, "loop")
    NAME(state, "state")
    NAME(v1, "v1")
    NAME(sent_seq, "sent_seq")
    NAME(acked_seq, "acked_seq")
    NAME(sent_bytes, "sent_bytes")
    NAME(acked_bytes, "acked_bytes")
    NAME(last_tx, "_last_tx")
    NAME(limits, "limits")
    NAME(window_messages, "window_messages")
    NAME(window_bytes, "window_bytes")
    NAME(writable, "writable")
    NAME(pending_size, "pending_size")
    NAME(queue_batch, "queue_batch")
    NAME(time, "time")
    NAME(mono, "_mono")
    NAME(cls, "cls")
    NAME(next, "next")
    NAME(offsets, "offsets")
    NAME(payload, "payload")
    NAME(reply, "reply")
    NAME(size, "size")
    NAME(subject, "subject")
    NAME(data, "data")
#undef NAME
    return 0;
}

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "natstream._cstream",
    "The per-message paths of natstream's streams, in C (optional; see _cstream.c).",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__cstream(void)
{
    if (intern_names() < 0) {
        return NULL;
    }
    if (PyType_Ready(&CreditCoreType) < 0 || PyType_Ready(&AttemptCoreType) < 0 ||
        PyType_Ready(&ScannerType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "CreditCore", (PyObject *)&CreditCoreType) < 0 ||
        PyModule_AddObjectRef(m, "AttemptCore", (PyObject *)&AttemptCoreType) < 0 ||
        PyModule_AddObjectRef(m, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
