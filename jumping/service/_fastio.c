/*
 * jumping.service._fastio: the TUN device's read loop in C (optional).
 *
 * read_burst(fd, size, limit) reads a non-blocking descriptor until it is empty (EAGAIN) or
 * ``limit`` bytes were read, and returns the packets as a list of bytes. It is the loop of
 * LeanTuntapPort.doRead without the Python exception that ends it: measured on an idle
 * tunnel, the interpreter spends tens of microseconds raising and matching that OSError
 * right after a wake-up from a long epoll_wait, on the way from the TUN read to the send.
 * jumping/service/tun.py has the pure-Python twin (_read_burst_py); the tests run both.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <unistd.h>

static PyObject *
read_burst(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "read_burst(fd, size, limit)");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    Py_ssize_t size = PyLong_AsSsize_t(args[1]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd > 0x7fffffffL || size <= 0) {
        PyErr_SetString(PyExc_ValueError, "read_burst: fd >= 0 and size > 0");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t total = 0;
    while (total < limit) {
        PyObject *b = PyBytes_FromStringAndSize(NULL, size);
        if (b == NULL)
            goto fail;
        ssize_t n = read((int)fd, PyBytes_AS_STRING(b), (size_t)size);
        if (n < 0) {
            int e = errno;
            Py_DECREF(b);
            if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR)
                break;
            if (PyList_GET_SIZE(out) > 0)
                break; /* hand over what was read; the next read meets the error again */
            errno = e;
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
        if (n == 0) {
            Py_DECREF(b);
            break; /* end of file: not a TUN device any more */
        }
        if (n < size && _PyBytes_Resize(&b, n) < 0)
            goto fail;
        int r = PyList_Append(out, b);
        Py_DECREF(b);
        if (r < 0)
            goto fail;
        total += n;
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"read_burst", (PyCFunction)(void (*)(void))read_burst, METH_FASTCALL,
     "read_burst(fd, size, limit) -> [bytes]: read until EAGAIN or limit bytes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastio",
    "The TUN device's read loop in C (jumping/service/tun.py has its twin).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__fastio(void)
{
    return PyModule_Create(&module);
}
