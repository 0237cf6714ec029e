/* AttemptCore: the fields of a requester attempt that its receive path reads (base
 * of _requester._attempt.Attempt), and that path in C: Attempt._on_raw's fast path
 * and _delivery.call_direct (ns_lane_take); _delivery.drain_pack (ns_drain_pack) is
 * in _cstream_pack.c.
 */
#include "_cstream.h"

/* ------------------------------------------------------------ light messages */

/* The offset of ``name``, a plain slot (a member descriptor holding an object) of
 * ``type``; -1 when it is anything else. */
static Py_ssize_t
slot_offset(PyTypeObject *type, PyObject *name)
{
    PyObject *descr = PyObject_GetAttr((PyObject *)type, name);
    if (descr == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t offset = -1;
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *def = ((PyMemberDescrObject *)descr)->d_member;
        if (def->type == T_OBJECT_EX && !(def->flags & READONLY)) {
            offset = def->offset;
        }
    }
    Py_DECREF(descr);
    return offset;
}

int
ns_find_slots(AttemptCore *a, PyTypeObject *type)
{
    if (a->slots_of == type) {
        return 1;
    }
    a->slots_of = NULL;
    if (type->tp_flags & Py_TPFLAGS_IS_ABSTRACT || type->tp_alloc == NULL) {
        return 0;
    }
    Py_ssize_t d = slot_offset(type, ns_names.data);
    Py_ssize_t s = slot_offset(type, ns_names.subject);
    Py_ssize_t r = slot_offset(type, ns_names.reply);
    if (d < 0 || s < 0 || r < 0) {
        return 0;
    }
    a->off_data = d;
    a->off_subject = s;
    a->off_reply = r;
    a->slots_of = type; /* borrowed: only compared, never used once it changes */
    return 1;
}

static inline void
set_slot(PyObject *obj, Py_ssize_t offset, PyObject *value)
{
    PyObject **slot = (PyObject **)((char *)obj + offset);
    Py_INCREF(value);
    Py_XSETREF(*slot, value);
}

PyObject *
ns_light_msg(AttemptCore *a, PyObject *type, PyObject *data, PyObject *subject, PyObject *reply,
             int *ok)
{
    /* object.__new__(type), then msg.data, msg.subject, msg.reply set. */
    *ok = PyType_Check(type) && ns_find_slots(a, (PyTypeObject *)type);
    if (!*ok) {
        return NULL;
    }
    PyTypeObject *t = (PyTypeObject *)type;
    PyObject *msg = t->tp_alloc(t, 0);
    if (msg == NULL) {
        return NULL;
    }
    set_slot(msg, a->off_data, data);
    set_slot(msg, a->off_subject, subject);
    set_slot(msg, a->off_reply, reply);
    return msg;
}

/* ------------------------------------------------------------ the current task */

PyObject *
ns_call_as(PyObject *loop, PyObject *task, PyObject *fn, PyObject *arg)
{
    /* _tasks.call_as: fn(arg) with ``task`` current, the previous one restored. */
    PyObject *type, *value, *tb;
    PyObject *result;
    if (ns_config.task_swap != NULL) {
        PyObject *previous = PyObject_CallFunctionObjArgs(ns_config.task_swap, loop, task, NULL);
        if (previous == NULL) {
            return NULL;
        }
        result = PyObject_CallOneArg(fn, arg);
        PyErr_Fetch(&type, &value, &tb);
        PyObject *back = PyObject_CallFunctionObjArgs(ns_config.task_swap, loop, previous, NULL);
        Py_DECREF(previous);
        if (back == NULL) {
            Py_XDECREF(result);
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            return NULL;
        }
        Py_DECREF(back);
        PyErr_Restore(type, value, tb);
        return result;
    }
    PyObject *table = ns_config.task_table;
    if (table == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "no way to set the current task");
        return NULL;
    }
    PyObject *previous = PyDict_GetItemWithError(table, loop);
    if (previous == NULL && PyErr_Occurred()) {
        return NULL;
    }
    Py_XINCREF(previous);
    if (PyDict_SetItem(table, loop, task) < 0) {
        Py_XDECREF(previous);
        return NULL;
    }
    result = PyObject_CallOneArg(fn, arg);
    PyErr_Fetch(&type, &value, &tb);
    int rc;
    if (previous != NULL) {
        rc = PyDict_SetItem(table, loop, previous);
        Py_DECREF(previous);
    }
    else {
        rc = PyDict_DelItem(table, loop);
        if (rc < 0 && PyErr_ExceptionMatches(PyExc_KeyError)) {
            PyErr_Clear(); /* table.pop(loop, None) */
            rc = 0;
        }
    }
    if (rc < 0) {
        Py_XDECREF(result);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return NULL;
    }
    PyErr_Restore(type, value, tb);
    return result;
}

/* ------------------------------------------------------------ the receive path */

static int
call_hold(AttemptCore *a, PyObject *msg, PyObject *result, PyObject *exc)
{
    /* _delivery._hold(attempt, msg, result, exc) */
    if (ns_config.hold == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "natstream._cstream is not configured");
        return -1;
    }
    PyObject *r = PyObject_CallFunctionObjArgs(ns_config.hold, (PyObject *)a, msg, result, exc,
                                               NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static int
rearm(AttemptCore *a)
{
    /* Attempt.rearm: if not self._timer.armed: self._arm() */
    PyObject *armed = PyObject_GetAttrString(a->timer, "armed");
    if (armed == NULL) {
        return -1;
    }
    int is_armed = PyObject_IsTrue(armed);
    Py_DECREF(armed);
    if (is_armed < 0) {
        return -1;
    }
    if (!is_armed) {
        PyObject *r = PyObject_CallMethodNoArgs((PyObject *)a, ns_names.arm);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
    }
    return 0;
}

static Py_ssize_t
data_size(AttemptCore *a, PyObject *msg)
{
    /* len(msg.data): the handler may have replaced it. */
    PyObject *data = *(PyObject **)((char *)msg + a->off_data);
    if (data != NULL && PyBytes_CheckExact(data)) {
        return PyBytes_GET_SIZE(data);
    }
    data = PyObject_GetAttr(msg, ns_names.data);
    if (data == NULL) {
        return -1;
    }
    Py_ssize_t n = PyObject_Size(data);
    Py_DECREF(data);
    return n;
}

static int
call_direct(AttemptCore *a, CreditCore *m, PyObject *msg, double now)
{
    /* _delivery.call_direct */
    PyObject *task = Py_NewRef(a->direct_task ? a->direct_task : Py_None);
    PyObject *direct = Py_NewRef(a->direct);
    PyObject *result = ns_call_as(a->loop, task, direct, msg);
    Py_DECREF(task);
    Py_DECREF(direct);
    if (result == NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != NULL) {
            PyException_SetTraceback(value, tb);
        }
        int rc = call_hold(a, msg, Py_None, value);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return rc;
    }
    if (result != Py_None && result != Py_True) {
        int rc = call_hold(a, msg, result, Py_None);
        Py_DECREF(result);
        return rc;
    }
    Py_DECREF(result);
    Py_ssize_t size = data_size(a, msg);
    if (size < 0) {
        return -1;
    }
    PyObject *ack = NULL;
    if (ns_on_taken(m, size, &ack) < 0) {
        return -1;
    }
    if (ack != NULL) {
        PyObject *when = PyFloat_FromDouble(now);
        PyObject *r = when == NULL ? NULL
                                   : PyObject_CallMethodObjArgs((PyObject *)a, ns_names.send_ack,
                                                                ack, when, NULL);
        Py_XDECREF(when);
        Py_DECREF(ack);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
    }
    else if (m->ack_deferred && !a->deferred_soon) {
        PyObject *r = PyObject_CallMethodNoArgs((PyObject *)a, ns_names.defer_ack_check);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
    }
    /* RequesterMachine.heartbeating(): the stall rule alone judges the peer then. */
    int heartbeating = m->v1 == Py_True && m->heartbeat > 0 && m->control_subject != NULL &&
                       m->control_subject != Py_None;
    if (m->request_timeout != NULL && m->request_timeout != Py_None && !heartbeating) {
        double back; /* consumer_back(loop.time()) */
        if (ns_now(a->clock, a->mono, &back) < 0) {
            return -1;
        }
        PyObject *since = PyFloat_FromDouble(back);
        if (since == NULL) {
            return -1;
        }
        Py_XSETREF(m->waiting_since, since);
    }
    return rearm(a);
}

static int
future_done(PyObject *w)
{
    PyObject *done = PyObject_CallMethodNoArgs(w, ns_names.done);
    if (done == NULL) {
        return -1;
    }
    int is_done = PyObject_IsTrue(done);
    Py_DECREF(done);
    return is_done;
}

/* After the message is accepted: deliver it (Attempt._on_raw from ``w = self._waiter``). */
static int
deliver(AttemptCore *a, CreditCore *m, PyObject *msg, double now)
{
    PyObject *w = a->waiter;
    if (w != NULL && w != Py_None) {
        Py_INCREF(w);
        if (a->direct != NULL && a->direct != Py_None) {
            int done = future_done(w);
            if (done < 0) {
                Py_DECREF(w);
                return -1;
            }
            if (!done) {
                Py_DECREF(w);
                return call_direct(a, m, msg, now);
            }
        }
        Py_XSETREF(a->waiter, Py_NewRef(Py_None)); /* _wake, inlined */
        int done = future_done(w);
        if (done == 0) {
            PyObject *r = PyObject_CallMethodOneArg(w, ns_names.set_result, Py_None);
            if (r == NULL) {
                done = -1;
            }
            Py_XDECREF(r);
        }
        Py_DECREF(w);
        if (done < 0) {
            return -1;
        }
    }
    if (a->buffer == NULL) {
        PyErr_SetString(PyExc_AttributeError, "buffer");
        return -1;
    }
    PyObject *r = PyObject_CallMethodOneArg(a->buffer, ns_names.append, msg);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return rearm(a);
}

int
ns_lane_take(AttemptCore *a, const char *reply, Py_ssize_t reply_len, const char *hdr,
             Py_ssize_t hlen, const char *payload, Py_ssize_t size)
{
    /* Attempt._on_raw's fast path: data from the bound responder (its reply subject,
     * a header block of Ns-Seq and the expected tail), in order and within the
     * window. Anything the Python path would not take this way, or that needs what
     * is not here (a direct call without the task swap, an unexpected item type),
     * is left to it before anything changes. */
    PyObject *match = a->reply_match;
    PyObject *tail = a->tail;
    if (hlen <= 0 || match == NULL || !PyBytes_CheckExact(match) ||
        PyBytes_GET_SIZE(match) != reply_len ||
        memcmp(PyBytes_AS_STRING(match), reply, reply_len) != 0 || tail == NULL ||
        !PyBytes_CheckExact(tail)) {
        return 0;
    }
    long long seq = ns_data_seq(hdr, hlen, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail));
    if (seq <= 0 || a->machine == NULL || !PyObject_TypeCheck(a->machine, &CreditCoreType) ||
        a->item_type == NULL || !PyType_Check(a->item_type) ||
        !ns_find_slots(a, (PyTypeObject *)a->item_type) || a->inbox == NULL ||
        a->reply_str == NULL || a->loop == NULL || a->timer == NULL ||
        (!a->mono && a->clock == NULL)) {
        return 0;
    }
    if (a->direct != NULL && a->direct != Py_None && ns_config.task_swap == NULL &&
        ns_config.task_table == NULL) {
        return 0;
    }
    CreditCore *m = (CreditCore *)a->machine;
    double now;
    if (ns_now(a->clock, a->mono, &now) < 0) {
        return -1;
    }
    if (!ns_on_data(m, now, seq, size)) {
        return 0;
    }
    Py_INCREF(a);
    Py_INCREF(m);
    int rc = -1;
    PyObject *data = PyBytes_FromStringAndSize(payload, size);
    if (data != NULL) {
        int ok;
        PyObject *msg = ns_light_msg(a, a->item_type, data, a->inbox, a->reply_str, &ok);
        Py_DECREF(data);
        if (msg != NULL) {
            rc = deliver(a, m, msg, now);
            Py_DECREF(msg);
        }
    }
    Py_DECREF(m);
    Py_DECREF(a);
    return rc < 0 ? -1 : 1;
}

/* ------------------------------------------------------------ the type */

static int
AttemptCore_traverse(AttemptCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->machine);
    Py_VISIT(self->buffer);
    Py_VISIT(self->waiter);
    Py_VISIT(self->direct);
    Py_VISIT(self->direct_task);
    Py_VISIT(self->reply_match);
    Py_VISIT(self->tail);
    Py_VISIT(self->item_type);
    Py_VISIT(self->inbox);
    Py_VISIT(self->reply_str);
    Py_VISIT(self->timer);
    Py_VISIT(self->loop);
    Py_VISIT(self->clock);
    return 0;
}

static int
AttemptCore_clear(AttemptCore *self)
{
    Py_CLEAR(self->machine);
    Py_CLEAR(self->buffer);
    Py_CLEAR(self->waiter);
    Py_CLEAR(self->direct);
    Py_CLEAR(self->direct_task);
    Py_CLEAR(self->reply_match);
    Py_CLEAR(self->tail);
    Py_CLEAR(self->item_type);
    Py_CLEAR(self->inbox);
    Py_CLEAR(self->reply_str);
    Py_CLEAR(self->timer);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->clock);
    return 0;
}

static void
AttemptCore_dealloc(AttemptCore *self)
{
    PyObject_GC_UnTrack(self);
    AttemptCore_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef AttemptCore_members[] = {
    {"machine", T_OBJECT_EX, offsetof(AttemptCore, machine), 0, NULL},
    {"buffer", T_OBJECT_EX, offsetof(AttemptCore, buffer), 0, NULL},
    {"_waiter", T_OBJECT_EX, offsetof(AttemptCore, waiter), 0, NULL},
    {"direct", T_OBJECT_EX, offsetof(AttemptCore, direct), 0, NULL},
    {"direct_task", T_OBJECT_EX, offsetof(AttemptCore, direct_task), 0, NULL},
    {"_reply_match", T_OBJECT_EX, offsetof(AttemptCore, reply_match), 0, NULL},
    {"_tail", T_OBJECT_EX, offsetof(AttemptCore, tail), 0, NULL},
    {"_item_type", T_OBJECT_EX, offsetof(AttemptCore, item_type), 0, NULL},
    {"inbox", T_OBJECT_EX, offsetof(AttemptCore, inbox), 0, NULL},
    {"_reply_str", T_OBJECT_EX, offsetof(AttemptCore, reply_str), 0, NULL},
    {"_timer", T_OBJECT_EX, offsetof(AttemptCore, timer), 0, NULL},
    {"loop", T_OBJECT_EX, offsetof(AttemptCore, loop), 0, NULL},
    {"_clock", T_OBJECT_EX, offsetof(AttemptCore, clock), 0, NULL},
    {"_mono", T_BOOL, offsetof(AttemptCore, mono), 0, NULL},
    {"_deferred_soon", T_BOOL, offsetof(AttemptCore, deferred_soon), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject AttemptCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "natstream._cstream.AttemptCore",
    .tp_doc = PyDoc_STR("The fields of a requester attempt its receive path reads, in C."),
    .tp_basicsize = sizeof(AttemptCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)AttemptCore_dealloc,
    .tp_traverse = (traverseproc)AttemptCore_traverse,
    .tp_clear = (inquiry)AttemptCore_clear,
    .tp_members = AttemptCore_members,
};
