/*
 * jumping.service._fastio: the read loops of the TUN device and the UDP sockets in C
 * (optional).
 *
 * read_burst(fd, size, limit) reads a non-blocking descriptor until it is empty (EAGAIN) or
 * ``limit`` bytes were read, and returns the packets as a list of bytes. It is the loop of
 * LeanTuntapPort.doRead without the Python exception that ends it: measured on an idle
 * tunnel, the interpreter spends tens of microseconds raising and matching that OSError
 * right after a wake-up from a long epoll_wait, on the way from the TUN read to the send.
 * jumping/service/tun.py has the pure-Python twin (_read_burst_py); the tests run both.
 *
 * recv_burst(fd, size, limit, count, gro) is the same for a UDP socket (LeanPort.doRead in
 * jumping/builtin/udp.py): recvmsg until EAGAIN, ``limit`` bytes or ``count`` datagrams,
 * returning (data, address, segment size) tuples; the address is the tuple Python's
 * socket module makes ((host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6),
 * the segment size is the UDP_GRO control message's (0 without one). Its twin is
 * _recv_burst_py there.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

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

/* the address tuple Python's socket module makes for this sockaddr */
static PyObject *
make_address(const struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", host, (int)ntohs(a->sin_port));
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(siII)", host, (int)ntohs(a->sin6_port),
                             (unsigned int)ntohl(a->sin6_flowinfo),
                             (unsigned int)a->sin6_scope_id);
    }
    PyErr_Format(PyExc_ValueError, "recv_burst: address family %d", (int)ss->ss_family);
    return NULL;
}

static PyObject *
recv_burst(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "recv_burst(fd, size, limit, count, gro)");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    Py_ssize_t size = PyLong_AsSsize_t(args[1]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[2]);
    Py_ssize_t count = PyLong_AsSsize_t(args[3]);
    int gro = PyObject_IsTrue(args[4]);
    if (PyErr_Occurred() || gro < 0)
        return NULL;
    if (fd < 0 || fd > 0x7fffffffL || size <= 0) {
        PyErr_SetString(PyExc_ValueError, "recv_burst: fd >= 0 and size > 0");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    /* consecutive datagrams from one source share one address tuple */
    struct sockaddr_storage last;
    socklen_t last_len = 0;
    PyObject *last_addr = NULL;
    Py_ssize_t total = 0;
    while (total < limit && PyList_GET_SIZE(out) < count) {
        PyObject *b = PyBytes_FromStringAndSize(NULL, size);
        if (b == NULL)
            goto fail;
        struct sockaddr_storage ss;
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } control;
        struct iovec iov = {PyBytes_AS_STRING(b), (size_t)size};
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_name = &ss;
        msg.msg_namelen = sizeof(ss);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        if (gro) {
            msg.msg_control = control.buf;
            msg.msg_controllen = sizeof(control.buf);
        }
        ssize_t n = recvmsg((int)fd, &msg, 0);
        if (n < 0) {
            int e = errno;
            Py_DECREF(b);
            if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR)
                break;
            if (PyList_GET_SIZE(out) > 0)
                break; /* hand over what was read; the caller meets the next error itself */
            errno = e;
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
        if (n < size && _PyBytes_Resize(&b, n) < 0)
            goto fail;
        long seg = 0;
        if (gro) {
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
                if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO &&
                    c->cmsg_len >= CMSG_LEN(sizeof(int))) {
                    int v;
                    memcpy(&v, CMSG_DATA(c), sizeof(v));
                    seg = v;
                }
            }
        }
        PyObject *addr;
        if (last_addr != NULL && msg.msg_namelen == last_len &&
            memcmp(&ss, &last, last_len) == 0) {
            addr = last_addr;
            Py_INCREF(addr);
        } else {
            addr = make_address(&ss);
            if (addr == NULL) {
                Py_DECREF(b);
                goto fail;
            }
            Py_XDECREF(last_addr);
            last_addr = addr;
            Py_INCREF(last_addr);
            last_len = msg.msg_namelen;
            memcpy(&last, &ss, last_len);
        }
        PyObject *seg_obj = PyLong_FromLong(seg);
        if (seg_obj == NULL) {
            Py_DECREF(b);
            Py_DECREF(addr);
            goto fail;
        }
        PyObject *t = PyTuple_New(3);
        if (t == NULL) {
            Py_DECREF(b);
            Py_DECREF(addr);
            Py_DECREF(seg_obj);
            goto fail;
        }
        PyTuple_SET_ITEM(t, 0, b);
        PyTuple_SET_ITEM(t, 1, addr);
        PyTuple_SET_ITEM(t, 2, seg_obj);
        int r = PyList_Append(out, t);
        Py_DECREF(t);
        if (r < 0)
            goto fail;
        total += n;
    }
    Py_XDECREF(last_addr);
    return out;
fail:
    Py_XDECREF(last_addr);
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"read_burst", (PyCFunction)(void (*)(void))read_burst, METH_FASTCALL,
     "read_burst(fd, size, limit) -> [bytes]: read until EAGAIN or limit bytes"},
    {"recv_burst", (PyCFunction)(void (*)(void))recv_burst, METH_FASTCALL,
     "recv_burst(fd, size, limit, count, gro) -> [(bytes, address, segment)]: recvmsg until "
     "EAGAIN, limit bytes or count datagrams"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastio",
    "The TUN device's and the UDP sockets' read loops in C (tun.py and udp.py have their "
    "twins).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__fastio(void)
{
    return PyModule_Create(&module);
}
