/* natstream._cwriter: the lock-free fast path of HourlyFileWriter.write, in C.
 *
 * Optional: natstream works without it (the pure-Python WriterCore in
 * _writers/_core.py has the same attributes and the same write());
 * NATSTREAM_NO_EXTENSIONS=1 turns it off.
 *
 * WriterCore holds the fields the fast path reads (_lo, _hi, _fill, _gate, _chunks,
 * _live) as members readable and writable from Python under the same names, so
 * HourlyFileWriter (a subclass) keeps using them as attributes. write() does exactly
 * what the Python fast path does; anything else goes to the subclass's _write_locked()
 * or _settle_late(), looked up on the instance.
 *
 * Like the Python fast path, it relies on the GIL: the checks, the list append and the
 * fill update run without the writer's lock, and no other thread runs Python code in
 * between (this function calls no Python code on the fast path, so it is even one
 * atomic step with respect to other threads). CPython's free-threaded build is not
 * supported.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_ctime.h"

typedef struct {
    PyObject_HEAD
    double lo;          /* the fast path's hour: lo <= now < hi (empty range: shut) */
    double hi;
    Py_ssize_t fill;    /* bytes in chunks (an estimate, see _writers/_hourly.py) */
    Py_ssize_t gate;    /* the fast path needs fill + size < gate */
    PyObject *chunks;   /* list of accepted records (bytes), oldest first */
    char live;          /* the writer is open: read after the append */
} WriterCore;

static PyObject *str_write_locked;  /* "_write_locked" */
static PyObject *str_settle_late;   /* "_settle_late" */
static PyObject *time_override;     /* tests: a callable replacing the system clock */

/* The time as time.time() returns it (CPython 3.11: CLOCK_REALTIME read as
 * nanoseconds, then converted by _PyTime_AsSecondsDouble), so the fast path and the
 * Python code under the lock agree on which hour a moment belongs to. */
static int
read_clock(double *now)
{
    if (time_override != NULL) {
        PyObject *result = PyObject_CallNoArgs(time_override);
        if (result == NULL) {
            return -1;
        }
        *now = PyFloat_AsDouble(result);
        Py_DECREF(result);
        return (*now == -1.0 && PyErr_Occurred()) ? -1 : 0;
    }
    return ns_clock_seconds(CLOCK_REALTIME, now);
}

PyDoc_STRVAR(write_doc,
"write($self, data)\n--\n\n"
"Accept one record (bytes); return ``len(data)``.\n\n"
"The record is appended to the buffer for the current hour's file, never split and\n"
"never mixed with other records. No disk I/O happens here unless the buffer is\n"
"full: then the buffer is written out on this thread first.\n\n"
"Raises:\n"
"    WriterError: the writer is closed, or the flush thread stored an error (raised\n"
"        once), or writing out a full buffer failed (as in :meth:`flush`); the\n"
"        record was not accepted.\n"
"    TypeError: ``data`` is not bytes-like.");

static PyObject *
WriterCore_write(WriterCore *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    /* One argument, ``data``, by position or by name (as the Python method). */
    PyObject *data;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nkw == 0 && nargs == 1) {
        data = args[0];
    }
    else if (nargs == 0 && nkw == 1
             && PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0))
             && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "data") == 0) {
        data = args[0];
    }
    else {
        PyErr_SetString(PyExc_TypeError, "write() takes exactly one argument (data)");
        return NULL;
    }
    /* The fast path of _writers._core.WriterCore.write: exact bytes, default clock
     * inside the armed hour, buffer below the gate. See the comment there. */
    if (PyBytes_CheckExact(data)) {
        double now;
        if (read_clock(&now) < 0) {
            return NULL;
        }
        if (self->lo <= now && now < self->hi) {
            Py_ssize_t size = PyBytes_GET_SIZE(data);
            Py_ssize_t fill = self->fill + size;
            PyObject *chunks = self->chunks;
            if (fill < self->gate && chunks != NULL && PyList_CheckExact(chunks)) {
                if (PyList_Append(chunks, data) < 0) {  /* takes its own reference */
                    return NULL;
                }
                self->fill = fill;
                if (self->live) {
                    return PyLong_FromSsize_t(size);
                }
                return PyObject_CallMethodOneArg((PyObject *)self, str_settle_late, data);
            }
        }
    }
    return PyObject_CallMethodOneArg((PyObject *)self, str_write_locked, data);
}

static PyObject *
WriterCore_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    /* The same starting state as the Python WriterCore: shut, empty. */
    WriterCore *self = (WriterCore *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->lo = Py_HUGE_VAL;
    self->hi = -Py_HUGE_VAL;
    self->fill = 0;
    self->gate = 0;
    self->live = 0;
    self->chunks = PyList_New(0);
    if (self->chunks == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
WriterCore_traverse(WriterCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->chunks);
    return 0;
}

static int
WriterCore_clear(WriterCore *self)
{
    Py_CLEAR(self->chunks);
    return 0;
}

static void
WriterCore_dealloc(WriterCore *self)
{
    /* A static type: a heap subclass's dealloc releases its type, not this one. */
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->chunks);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef WriterCore_methods[] = {
    {"write", (PyCFunction)(void (*)(void))WriterCore_write, METH_FASTCALL | METH_KEYWORDS,
     write_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef WriterCore_members[] = {
    {"_lo", T_DOUBLE, offsetof(WriterCore, lo), 0, "start of the fast path's hour"},
    {"_hi", T_DOUBLE, offsetof(WriterCore, hi), 0, "end of the fast path's hour"},
    {"_fill", T_PYSSIZET, offsetof(WriterCore, fill), 0, "bytes buffered (estimate)"},
    {"_gate", T_PYSSIZET, offsetof(WriterCore, gate), 0, "fast path needs _fill + size < _gate"},
    {"_chunks", T_OBJECT_EX, offsetof(WriterCore, chunks), 0, "accepted records"},
    {"_live", T_BOOL, offsetof(WriterCore, live), 0, "the writer is open"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject WriterCore_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "natstream._cwriter.WriterCore",
    .tp_doc = PyDoc_STR("The fields and the lock-free write() of HourlyFileWriter, in C."),
    .tp_basicsize = sizeof(WriterCore),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = WriterCore_new,
    .tp_dealloc = (destructor)WriterCore_dealloc,
    .tp_traverse = (traverseproc)WriterCore_traverse,
    .tp_clear = (inquiry)WriterCore_clear,
    .tp_methods = WriterCore_methods,
    .tp_members = WriterCore_members,
};

static PyObject *
set_time(PyObject *Py_UNUSED(module), PyObject *clock)
{
    if (clock == Py_None) {
        Py_CLEAR(time_override);
    }
    else if (!PyCallable_Check(clock)) {
        PyErr_SetString(PyExc_TypeError, "_set_time() takes a callable or None");
        return NULL;
    }
    else {
        Py_INCREF(clock);
        Py_XSETREF(time_override, clock);
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_set_time", set_time, METH_O,
     PyDoc_STR("For tests: read the time from clock() (a float, like time.time()) "
               "instead of the system clock; None restores the system clock.")},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef cwriter_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "natstream._cwriter",
    .m_doc = PyDoc_STR("C fast path of natstream.HourlyFileWriter.write (optional)."),
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__cwriter(void)
{
    if (str_write_locked == NULL) {
        str_write_locked = PyUnicode_InternFromString("_write_locked");
        if (str_write_locked == NULL) {
            return NULL;
        }
    }
    if (str_settle_late == NULL) {
        str_settle_late = PyUnicode_InternFromString("_settle_late");
        if (str_settle_late == NULL) {
            return NULL;
        }
    }
    if (PyType_Ready(&WriterCore_Type) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&cwriter_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&WriterCore_Type);
    if (PyModule_AddObject(module, "WriterCore", (PyObject *)&WriterCore_Type) < 0) {
        Py_DECREF(&WriterCore_Type);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
