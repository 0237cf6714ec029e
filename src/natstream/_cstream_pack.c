/* Packed items on the requester (_delivery.drain_pack in C, ns_drain_pack): a packed
 * payload's items handed out one call each, their credit counted, an ack sent when due.
 */
#include "_cstream.h"

/* ------------------------------------------------------------ packed items */

enum { PACK_DONE = 0, PACK_STOPPED = 1, PACK_OTHER = 2, PACK_PYTHON = 3 };

static int
send_ack(AttemptCore *a, PyObject *ack)
{
    PyObject *r = PyObject_CallMethodOneArg((PyObject *)a, ns_names.send_ack, ack);
    Py_DECREF(ack);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static int
count_run(AttemptCore *a, CreditCore *m, long long count, long long nbytes, int ack_now)
{
    /* m.on_delivered_many(count, nbytes); the ack sent when ``ack_now``. */
    if (count <= 0) {
        return 0;
    }
    PyObject *ack = NULL;
    if (ns_on_delivered_many(m, count, nbytes, &ack) < 0) {
        return -1;
    }
    if (ack == NULL) {
        return 0;
    }
    if (!ack_now) {
        Py_DECREF(ack);
        return 0;
    }
    return send_ack(a, ack);
}

static Py_ssize_t
offset_at(PyObject *offsets, Py_ssize_t k)
{
    return PyLong_AsSsize_t(PyList_GET_ITEM(offsets, k));
}

static Py_ssize_t
bisect_left(PyObject *offsets, Py_ssize_t x, Py_ssize_t lo)
{
    Py_ssize_t hi = PyList_GET_SIZE(offsets);
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        Py_ssize_t v = offset_at(offsets, mid);
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (v < x) {
            lo = mid + 1;
        }
        else {
            hi = mid;
        }
    }
    return lo;
}

static PyObject *
get(PyObject *obj, PyObject *name)
{
    return PyObject_GetAttr(obj, name);
}

PyObject *
ns_drain_pack(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* _delivery.drain_pack up to the first result other than None, True or False.
     * Returns (DONE, None), (STOPPED, None) when the handler returned False,
     * (OTHER, result) with pack.next just past its item and the items before it
     * counted, or (PYTHON, None) having done nothing (the Python loop must run). */
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "drain_pack(attempt, pack, handler)");
        return NULL;
    }
    PyObject *aobj = args[0], *pack = args[1], *handler = args[2];
    if (!PyObject_TypeCheck(aobj, &AttemptCoreType)) {
        return Py_BuildValue("(iO)", PACK_PYTHON, Py_None);
    }
    AttemptCore *a = (AttemptCore *)aobj;
    PyObject *mobj = a->machine;
    if (mobj == NULL || !PyObject_TypeCheck(mobj, &CreditCoreType)) {
        return Py_BuildValue("(iO)", PACK_PYTHON, Py_None);
    }
    CreditCore *m = (CreditCore *)Py_NewRef(mobj);
    PyObject *payload = get(pack, ns_names.payload);
    PyObject *offsets = get(pack, ns_names.offsets);
    PyObject *cls = get(pack, ns_names.cls);
    PyObject *subject = get(pack, ns_names.subject);
    PyObject *reply = get(pack, ns_names.reply);
    PyObject *size_o = get(pack, ns_names.size);
    PyObject *next_o = get(pack, ns_names.next);
    PyObject *out = NULL;
    Py_ssize_t n = -1, i = -1, j = -1;
    int status = PACK_DONE;
    PyObject *awaited = NULL;
    if (payload == NULL || offsets == NULL || cls == NULL || subject == NULL || reply == NULL ||
        size_o == NULL || next_o == NULL) {
        goto done;
    }
    n = PyLong_AsSsize_t(size_o);
    i = PyLong_AsSsize_t(next_o);
    if (PyErr_Occurred()) {
        goto done;
    }
    j = i;
    int ok = PyBytes_CheckExact(payload) && PyList_CheckExact(offsets) &&
             PyList_GET_SIZE(offsets) == n + 1 && PyType_Check(cls) &&
             ns_find_slots(a, (PyTypeObject *)cls) && 0 <= i && i <= n;
    if (!ok) {
        out = Py_BuildValue("(iO)", PACK_PYTHON, Py_None);
        goto cleanup;
    }
    const char *base = PyBytes_AS_STRING(payload);
    Py_ssize_t plen = PyBytes_GET_SIZE(payload);
    while (i < n) {
        long long msgs_left, bytes_left;
        ns_ack_budget(m, &msgs_left, &bytes_left);
        Py_ssize_t at = offset_at(offsets, i);
        if (at == -1 && PyErr_Occurred()) {
            goto done;
        }
        Py_ssize_t stop = n;
        if ((long long)i + msgs_left < stop) {
            stop = (Py_ssize_t)(i + msgs_left);
        }
        Py_ssize_t cut = bisect_left(offsets, at + (Py_ssize_t)bytes_left, i + 1);
        if (cut < 0) {
            goto done;
        }
        if (cut < stop) {
            stop = cut;
        }
        int broke = 0;
        for (j = i + 1; j <= stop; j++) {
            Py_ssize_t b = offset_at(offsets, j);
            if ((b == -1 && PyErr_Occurred()) || b < at || b > plen) {
                if (!PyErr_Occurred()) {
                    PyErr_SetString(PyExc_ValueError, "pack offsets out of order");
                }
                j--; /* nothing taken at j */
                goto done;
            }
            PyObject *data = PyBytes_FromStringAndSize(base + at, b - at);
            if (data == NULL) {
                j--;
                goto done;
            }
            PyObject *msg = ns_light_msg(a, cls, data, subject, reply, &ok);
            Py_DECREF(data);
            if (msg == NULL) {
                if (!PyErr_Occurred()) {
                    PyErr_SetString(PyExc_TypeError, "unexpected item type");
                }
                j--;
                goto done;
            }
            at = b;
            PyObject *result = PyObject_CallOneArg(handler, msg);
            Py_DECREF(msg);
            if (result == NULL) {
                goto done; /* the handler raised: it took item j - 1 */
            }
            if (result == Py_None || result == Py_True) {
                Py_DECREF(result);
                continue;
            }
            if (result == Py_False) {
                Py_DECREF(result);
                status = PACK_STOPPED;
                goto done;
            }
            /* Any other result (an awaitable, or a value taken as True): the caller
             * decides and counts this item; the items before it are counted here. */
            Py_ssize_t first = offset_at(offsets, i), last = offset_at(offsets, j - 1);
            if (count_run(a, m, j - 1 - i, last - first, 1) < 0) {
                Py_DECREF(result);
                goto done;
            }
            i = j - 1;
            status = PACK_OTHER;
            awaited = result;
            broke = 1;
            break;
        }
        if (broke) {
            break;
        }
        j = stop;
        Py_ssize_t first = offset_at(offsets, i), last = offset_at(offsets, stop);
        if (count_run(a, m, stop - i, last - first, 1) < 0) {
            goto done;
        }
        i = stop;
    }
done:
    /* As the Python loop's finally: what the handler took is counted (the item
     * that raised or stopped the stream excepted), pack.next is past it. */
    if (j >= 0 && n >= 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *next = PyLong_FromSsize_t(j);
        int rc = next == NULL ? -1 : PyObject_SetAttr(pack, ns_names.next, next);
        Py_XDECREF(next);
        if (rc == 0 && j - 1 > i) {
            Py_ssize_t first = offset_at(offsets, i), last = offset_at(offsets, j - 1);
            rc = count_run(a, m, j - 1 - i, last - first, 0);
        }
        if (type != NULL) {
            PyErr_Restore(type, value, tb);
        }
        else if (rc < 0) {
            Py_CLEAR(awaited);
        }
    }
    if (!PyErr_Occurred()) {
        out = Py_BuildValue("(iO)", status, awaited ? awaited : Py_None);
    }
    Py_XDECREF(awaited);
cleanup:
    Py_XDECREF(payload);
    Py_XDECREF(offsets);
    Py_XDECREF(cls);
    Py_XDECREF(subject);
    Py_XDECREF(reply);
    Py_XDECREF(size_o);
    Py_XDECREF(next_o);
    Py_DECREF(m);
    return out;
}
