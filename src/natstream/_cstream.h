/* natstream._cstream: the per-message paths of streams, in C (shared declarations).
 *
 * The Python modules stay the reference: each C path does exactly what the Python
 * fast path it replaces does, takes a message only where that path would, and
 * hands anything else back to the Python code unchanged (see docs/performance.md).
 *
 * Every function here runs with the GIL held and relies on it as the Python code
 * does; CPython's free-threaded build is not supported (the extension refuses to
 * build there, and natstream then runs on its pure-Python paths).
 */
#ifndef NATSTREAM_CSTREAM_H
#define NATSTREAM_CSTREAM_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdint.h>

#ifdef Py_GIL_DISABLED
#error "natstream._cstream relies on the GIL; the free-threaded build uses the Python paths"
#endif

#define NS_MAX_SEQ ((long long)1 << 53) /* _wire.MAX_SEQ */
#define NS_MAX_SEQ_DIGITS 20            /* _frames._MAX_SEQ_DIGITS */

/* ------------------------------------------------------------ shared state */

/* Set once by the Python layers that own them (see configure() in _cstream.c). */
typedef struct {
    PyObject *streaming;      /* RequesterState.STREAMING */
    PyObject *terminal;       /* _states.TERMINAL (frozenset) */
    PyObject *ctl_ack;        /* _wire.CTL_ACK */
    PyObject *responder_open; /* ResponderState.OPEN */
    PyObject *hold;           /* _delivery._hold(attempt, msg, result, exc) */
    PyObject *task_table;     /* asyncio.tasks._current_tasks (3.11), or NULL */
    PyObject *task_swap;      /* asyncio.tasks._swap_current_task (3.12+), or NULL */
    PyObject *pause_mask;     /* _sender._PAUSE_MASK */
    PyObject *pause_bytes;    /* _sender._PAUSE_BYTES */
} ns_config_t;

extern ns_config_t ns_config;

/* Interned attribute and method names. */
typedef struct {
    PyObject *ack_headers, *append, *arm, *defer_ack_check, *done, *handle, *send_ack,
        *set_result, *stats, *in_msgs, *in_bytes, *dispatch, *yield_soon, *raw_failed,
        *prefix, *tail, *limit, *sent, *machine, *link, *loop, *state, *v1, *sent_seq,
        *acked_seq, *sent_bytes, *acked_bytes, *last_tx, *limits, *window_messages,
        *window_bytes, *writable, *pending_size, *queue_batch, *time, *mono, *cls, *next,
        *offsets, *payload, *reply, *size, *subject, *data;
} ns_names_t;

extern ns_names_t ns_names;

extern PyTypeObject CreditCoreType;
extern PyTypeObject AttemptCoreType;
extern PyTypeObject ScannerType;

/* ------------------------------------------------------------ clocks */

/* The event loop's time: time.monotonic() read in C when ``mono`` (the loop's
 * time() is asyncio's, which returns exactly that), else ``clock()`` called. */
int ns_now(PyObject *clock, int mono, double *now);

/* ------------------------------------------------------------ credit (credit.c) */

typedef struct {
    PyObject_HEAD
    long long window_messages;
    long long window_bytes;
    long long received_seq;
    long long delivered_seq;
    long long delivered_bytes;
    long long received_bytes; /* _received_bytes */
    long long largest;        /* _largest */
    long long acked_seq;      /* _acked_seq */
    long long acked_bytes;    /* _acked_bytes */
    long long ack_every_msgs; /* _ack_every_msgs */
    long long ack_every_bytes;
    double last_tx; /* _last_tx */
    double last_rx; /* _last_rx */
    double heartbeat;
    char ack_deferred;
    PyObject *waiting_since; /* _waiting_since: float or None */
    PyObject *state;
    PyObject *v1;
    PyObject *control_subject;
    PyObject *request_timeout;
    PyObject *delivered_pos; /* _delivered_pos */
} CreditCore;

/* RequesterMachine.on_data: 1 accepted, 0 not (nothing changed). */
int ns_on_data(CreditCore *m, double now, long long seq, long long size);
/* Credit.on_taken; *ack gets the ack's headers (new reference) or stays NULL. */
int ns_on_taken(CreditCore *m, long long size, PyObject **ack);
/* Credit.on_delivered_many (count >= 1 messages without headers, nbytes in all). */
int ns_on_delivered_many(CreditCore *m, long long count, long long nbytes, PyObject **ack);
/* Credit.ack_budget. */
void ns_ack_budget(CreditCore *m, long long *msgs, long long *nbytes);

/* ------------------------------------------------------------ frames */

/* _frames.data_seq over raw memory; 0 for any other block. */
long long ns_data_seq(const char *raw, Py_ssize_t len, const char *tail, Py_ssize_t tail_len);

/* ------------------------------------------------------------ the receive lane (lane.c) */

typedef struct {
    PyObject_HEAD
    PyObject *machine;
    PyObject *buffer;      /* deque */
    PyObject *waiter;      /* _waiter */
    PyObject *direct;      /* callable or None */
    PyObject *direct_task; /* Task or None */
    PyObject *reply_match; /* _reply_match: bytes or None */
    PyObject *tail;        /* _tail: bytes */
    PyObject *item_type;   /* _item_type */
    PyObject *inbox;       /* str */
    PyObject *reply_str;   /* _reply_str */
    PyObject *timer;       /* _timer */
    PyObject *loop;
    PyObject *clock;       /* _clock: loop.time */
    char mono;             /* _mono */
    char deferred_soon;    /* _deferred_soon */
    /* Where the item type keeps its slots (found once per type). */
    PyTypeObject *slots_of;
    Py_ssize_t off_data, off_subject, off_reply;
} AttemptCore;

/* The scanner's fast path for one message of a lane's subscription: 1 taken, 0 not
 * (the caller hands it to the Python dispatch), -1 error. */
int ns_lane_take(AttemptCore *a, const char *reply, Py_ssize_t reply_len, const char *hdr,
                 Py_ssize_t hlen, const char *payload, Py_ssize_t size);

/* Whether ``type`` has the slots a light message is built with (data, subject,
 * reply), their offsets kept in ``a``: 1 yes, 0 no. */
int ns_find_slots(AttemptCore *a, PyTypeObject *type);

/* A light message of ``a``'s item type (new reference), or NULL with an exception;
 * *ok = 0 (and NULL, no exception) when the type's slots are not as expected. */
PyObject *ns_light_msg(AttemptCore *a, PyObject *type, PyObject *data, PyObject *subject,
                       PyObject *reply, int *ok);

/* fn(arg) with ``task`` as the loop's current task (_tasks.call_as). */
PyObject *ns_call_as(PyObject *loop, PyObject *task, PyObject *fn, PyObject *arg);

/* _delivery.drain_pack in C (pack.c). */
PyObject *ns_drain_pack(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

/* ------------------------------------------------------------ sending (send.c) */

PyObject *ns_fill_index(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *ns_pack_items(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

#endif
