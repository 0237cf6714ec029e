/* A clock read as CPython 3.11 reads it for time.time() / time.monotonic(): the
 * clock in nanoseconds, then _PyTime_AsSecondsDouble, so that C fast paths and the
 * Python code beside them agree to the last bit. Shared by natstream's extensions. */

#ifndef NATSTREAM_CTIME_H
#define NATSTREAM_CTIME_H

#include <Python.h>

#include <stdint.h>
#include <time.h>

static inline int
ns_clock_seconds(clockid_t clock, double *now)
{
    struct timespec ts;
    if (clock_gettime(clock, &ts) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    int64_t ns = (int64_t)ts.tv_sec * 1000000000 + (int64_t)ts.tv_nsec;
    volatile double d; /* as CPython: no excess precision (x87) */
    if (ns % 1000000000 == 0) {
        d = (double)(ns / 1000000000);
    }
    else {
        d = (double)ns;
        d /= 1e9;
    }
    *now = d;
    return 0;
}

#endif
