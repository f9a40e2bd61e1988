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
#include <structmember.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

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

/* ------------------------------------------------------------------ the initiation gate
 *
 * A gateway's UDP read loop refuses, on the datagram's bytes and before it is a Python
 * object, what GatewayCore would refuse without a session's keys (the core is the
 * reference; tests/test_gate.py compares them):
 *   - any datagram whose header is not version 1's (wire.message_type: shorter than the
 *     header, another version, an unknown type, a reserved field that is not zero outside
 *     DATA_SEGMENT): MALFORMED_HEADER;
 *   - an initiation (its size, a version-1 header) whose mac1 is wrong: BAD_MAC1;
 *   - while the core requires cookies (arm_cookies), an initiation without a valid mac2:
 *     a cookie reply sealed and sent here within the node's and the source's budgets
 *     (COOKIE_REQUIRED), else COOKIE_REPLY_LIMITED;
 *   - a DATA message (a version-1 header) whose receiver index no keypair has: UNKNOWN_INDEX;
 *   - a DATA message of a keypair younger than the key lifetime whose counter its replay
 *     window has seen (the window's own check(), read only): REPLAY, per keypair (the
 *     core's ledger attributes it to the session), for up to G_REPLAY_KEYS keypairs a pass.
 * Everything else is handed on as before (an initiation with a valid mac2 included).
 *
 * bind(mac1_key, index, key_lifetime) gives it the gateway's mac1 key, the core's index dict
 * (read, never changed) and the key lifetime; ``now`` is set for each read pass;
 * arm_cookies(now, secret, subkey, nonce_prefix, allowance, src_rate, src_burst) the cookie
 * part for one read pass; drain() what it refused since the last
 * drain: counts per drop reason, the heaviest source prefixes by the ledger's Misra-Gries
 * rule, the demanded (wasted) work. The per-source bucket of cookie replies is a direct-
 * mapped table (slots: a power of two; a colliding source takes the slot over with a full
 * bucket, as a prefix the core's table forgot comes back with one). Reply nonces count
 * from 2**63 under each nonce prefix (the core's CookieChecker from 1): none is used twice.
 */
#define G_INIT_LEN 168
#define G_MAC_OFF 136
#define G_REPLY_LEN 64
#define G_HDR_LEN 16
#define G_REPLAY_KEYS 8
enum {
    R_BAD_MAC1,
    R_COOKIE_REQUIRED,
    R_COOKIE_REPLY_LIMITED,
    R_UNKNOWN_INDEX,
    R_MALFORMED_HEADER,
    R_N
};
static const char *const reason_names[R_N] = {"BAD_MAC1", "COOKIE_REQUIRED",
                                              "COOKIE_REPLY_LIMITED", "UNKNOWN_INDEX",
                                              "MALFORMED_HEADER"};

typedef struct {
    unsigned char k[9]; /* 4 or 6, then the /32 or the /64 */
    long n;
} MGItem;

typedef struct {
    unsigned char k[9];
    unsigned char used;
    double tokens, at;
} Slot;

typedef struct {
    PyObject_HEAD
    EVP_MAC *mac;
    EVP_MAC_CTX *mac1;   /* keyed with the gateway's mac1 key */
    EVP_MAC_CTX *secret; /* keyed with the current cookie secret */
    EVP_MAC_CTX *m2;     /* keyed with one source's cookie */
    EVP_CIPHER_CTX *seal; /* ChaCha20-Poly1305 under the reply subkey */
    unsigned char prefix[16];
    unsigned long long nonce_n; /* the last reply nonce under prefix */
    int keyed;
    int armed;   /* cookies required: the cookie part is armed for this read pass */
    PyObject *index; /* the core's receiver index -> keypair dict (bind) */
    double key_lifetime;
    struct {
        PyObject *kp;      /* a strong reference until drained */
        long n;
        unsigned char k[9]; /* the first source, and how many came from it */
        long from_k;
    } rp[G_REPLAY_KEYS];
    int rp_len;
    long pending;    /* datagrams refused since the last drain */
    double now;
    long allowance;
    double src_rate, src_burst;
    Slot *slots;
    size_t nslots;
    unsigned long long seed;
    int tracked;
    MGItem *mg[R_N];
    int mg_len[R_N];
    long counts[R_N];
    long valid;        /* refused initiations with a valid mac1: demanded, wasted work */
    long send_errors;  /* cookie replies the socket refused */
    long last_count;   /* datagrams the gate took in the last recv_burst call */
    long last_bytes;
} Gate;

static void
Gate_dealloc(Gate *g)
{
    EVP_MAC_CTX_free(g->mac1);
    EVP_MAC_CTX_free(g->secret);
    EVP_MAC_CTX_free(g->m2);
    EVP_MAC_free(g->mac);
    EVP_CIPHER_CTX_free(g->seal);
    Py_XDECREF(g->index);
    for (int i = 0; i < g->rp_len; i++)
        Py_DECREF(g->rp[i].kp);
    PyMem_Free(g->slots);
    for (int r = 0; r < R_N; r++)
        PyMem_Free(g->mg[r]);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static EVP_MAC_CTX *
mac_ctx(EVP_MAC *mac)
{
    EVP_MAC_CTX *c = EVP_MAC_CTX_new(mac);
    if (c == NULL)
        return NULL;
    size_t size = 16;
    OSSL_PARAM p[] = {OSSL_PARAM_size_t(OSSL_MAC_PARAM_SIZE, &size), OSSL_PARAM_END};
    if (EVP_MAC_CTX_set_params(c, p) != 1) {
        EVP_MAC_CTX_free(c);
        return NULL;
    }
    return c;
}

/* Gate(slots, tracked, seed) */
static int
Gate_init(Gate *g, PyObject *args, PyObject *kw)
{
    Py_ssize_t slots, tracked;
    unsigned long long seed;
    static char *names[] = {"slots", "tracked", "seed", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "nnK", names, &slots, &tracked, &seed))
        return -1;
    if (slots < 1 || slots > (1 << 20) || (slots & (slots - 1)) || tracked < 1 ||
        tracked > 4096) {
        PyErr_SetString(PyExc_ValueError,
                        "Gate: slots a power of two in 1..2**20, tracked in 1..4096");
        return -1;
    }
    if (g->mac != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Gate: already initialised");
        return -1;
    }
    g->mac = EVP_MAC_fetch(NULL, OSSL_MAC_NAME_BLAKE2SMAC, NULL);
    if (g->mac == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Gate: libcrypto has no BLAKE2SMAC");
        return -1;
    }
    g->mac1 = mac_ctx(g->mac);
    g->secret = mac_ctx(g->mac);
    g->m2 = mac_ctx(g->mac);
    g->seal = EVP_CIPHER_CTX_new();
    g->slots = PyMem_Calloc((size_t)slots, sizeof(Slot));
    for (int r = 0; r < R_N; r++)
        g->mg[r] = PyMem_Calloc((size_t)tracked, sizeof(MGItem));
    if (g->mac1 == NULL || g->secret == NULL || g->m2 == NULL || g->seal == NULL ||
        g->slots == NULL || g->mg[0] == NULL || g->mg[1] == NULL || g->mg[2] == NULL ||
        g->mg[3] == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (EVP_EncryptInit_ex(g->seal, EVP_chacha20_poly1305(), NULL, NULL, NULL) != 1) {
        PyErr_SetString(PyExc_RuntimeError, "Gate: no ChaCha20-Poly1305 in libcrypto");
        return -1;
    }
    g->nslots = (size_t)slots;
    g->tracked = (int)tracked;
    g->seed = seed | 1;
    return 0;
}

/* bind(mac1_key, index): the gateway's mac1 key and the core's index dict */
static PyObject *
Gate_bind(Gate *g, PyObject *args)
{
    Py_buffer m1;
    PyObject *index;
    double lifetime;
    if (!PyArg_ParseTuple(args, "y*O!d", &m1, &PyDict_Type, &index, &lifetime))
        return NULL;
    int ok = m1.len >= 1 && m1.len <= 32;
    if (!ok)
        PyErr_SetString(PyExc_ValueError, "Gate.bind: a mac1 key of 1..32 bytes");
    else if (EVP_MAC_init(g->mac1, m1.buf, (size_t)m1.len, NULL) != 1) {
        ok = 0;
        PyErr_SetString(PyExc_RuntimeError, "Gate.bind: libcrypto refused the key");
    }
    PyBuffer_Release(&m1);
    if (!ok)
        return NULL;
    Py_INCREF(index);
    Py_XSETREF(g->index, index);
    g->key_lifetime = lifetime;
    Py_RETURN_NONE;
}

/* arm_cookies(now, secret, subkey, nonce_prefix, allowance, src_rate, src_burst) */
static PyObject *
Gate_arm_cookies(Gate *g, PyObject *args)
{
    double now, rate, burst;
    Py_buffer sec, sub, pre;
    long allowance;
    if (g->index == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Gate.arm_cookies: bind() first");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "dy*y*y*ldd", &now, &sec, &sub, &pre, &allowance, &rate,
                          &burst))
        return NULL;
    int ok = sec.len >= 1 && sec.len <= 32 && sub.len == 32 && pre.len == 16;
    if (!ok)
        PyErr_SetString(PyExc_ValueError, "Gate.arm_cookies: a secret of 1..32 bytes, a "
                                          "32-byte subkey, a 16-byte nonce prefix");
    else if (EVP_MAC_init(g->secret, sec.buf, (size_t)sec.len, NULL) != 1 ||
             EVP_EncryptInit_ex(g->seal, NULL, NULL, sub.buf, NULL) != 1) {
        ok = 0;
        PyErr_SetString(PyExc_RuntimeError, "Gate.arm_cookies: libcrypto refused a key");
    }
    if (ok) {
        if (!g->keyed || memcmp(g->prefix, pre.buf, 16) != 0) {
            memcpy(g->prefix, pre.buf, 16);
            g->nonce_n = 1ULL << 63;
            g->keyed = 1;
        }
        g->now = now;
        g->allowance = allowance < 0 ? 0 : allowance;
        g->src_rate = rate;
        g->src_burst = burst;
        g->armed = 1;
    }
    PyBuffer_Release(&sec);
    PyBuffer_Release(&sub);
    PyBuffer_Release(&pre);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Gate_cookies_off(Gate *g, PyObject *unused)
{
    (void)unused;
    g->armed = 0;
    Py_RETURN_NONE;
}

static PyObject *
prefix_str(const unsigned char *k)
{
    char host[INET6_ADDRSTRLEN];
    if (k[0] == 4) {
        if (inet_ntop(AF_INET, k + 1, host, sizeof(host)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return PyUnicode_FromFormat("%s/32", host);
    }
    unsigned char a[16] = {0};
    memcpy(a, k + 1, 8);
    if (inet_ntop(AF_INET6, a, host, sizeof(host)) == NULL)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyUnicode_FromFormat("[%s]/64", host);
}

/* drain() -> (valid, send_errors, [(reason, count, [(prefix, n), ...]), ...],
 *            [(keypair, replays, [(prefix, n)]), ...]):
 * what the gate refused since the last drain; resets its counts */
static PyObject *
Gate_drain(Gate *g, PyObject *unused)
{
    (void)unused;
    PyObject *per = PyList_New(0);
    if (per == NULL)
        return NULL;
    for (int r = 0; r < R_N; r++) {
        if (g->counts[r] == 0)
            continue;
        PyObject *heavy = PyList_New(g->mg_len[r]);
        if (heavy == NULL)
            goto fail;
        for (int i = 0; i < g->mg_len[r]; i++) {
            PyObject *s = prefix_str(g->mg[r][i].k);
            PyObject *t = s == NULL ? NULL : Py_BuildValue("(Nl)", s, g->mg[r][i].n);
            if (t == NULL) {
                Py_DECREF(heavy);
                goto fail;
            }
            PyList_SET_ITEM(heavy, i, t);
        }
        PyObject *e = Py_BuildValue("(slN)", reason_names[r], g->counts[r], heavy);
        if (e == NULL || PyList_Append(per, e) < 0) {
            Py_XDECREF(e);
            goto fail;
        }
        Py_DECREF(e);
    }
    PyObject *rl = PyList_New(g->rp_len);
    if (rl == NULL)
        goto fail;
    for (int i = 0; i < g->rp_len; i++) {
        PyObject *src = prefix_str(g->rp[i].k);
        PyObject *e = src == NULL ? NULL
                                  : Py_BuildValue("(Ol[(Nl)])", g->rp[i].kp, g->rp[i].n, src,
                                                  g->rp[i].from_k);
        if (e == NULL) {
            Py_DECREF(rl);
            goto fail;
        }
        PyList_SET_ITEM(rl, i, e);
    }
    PyObject *out = Py_BuildValue("(llNN)", g->valid, g->send_errors, per, rl);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < g->rp_len; i++)
        Py_CLEAR(g->rp[i].kp);
    g->rp_len = 0;
    for (int r = 0; r < R_N; r++) {
        g->counts[r] = 0;
        g->mg_len[r] = 0;
    }
    g->valid = 0;
    g->send_errors = 0;
    g->pending = 0;
    return out;
fail:
    Py_DECREF(per);
    return NULL;
}

static int
mac16(EVP_MAC_CTX *c, const unsigned char *key, size_t keylen, const unsigned char *d,
      size_t len, unsigned char *out)
{
    size_t outl = 0;
    if (EVP_MAC_init(c, key, keylen, NULL) != 1 || EVP_MAC_update(c, d, len) != 1 ||
        EVP_MAC_final(c, out, &outl, 16) != 1 || outl != 16)
        return -1;
    return 0;
}

/* the ledger's key of a source: its /32 or /64 */
static int
source_key(const struct sockaddr_storage *ss, unsigned char *k)
{
    if (ss->ss_family == AF_INET) {
        k[0] = 4;
        memcpy(k + 1, &((const struct sockaddr_in *)ss)->sin_addr, 4);
        memset(k + 5, 0, 4);
        return 1;
    }
    if (ss->ss_family == AF_INET6) {
        k[0] = 6;
        memcpy(k + 1, &((const struct sockaddr_in6 *)ss)->sin6_addr, 8);
        return 1;
    }
    return 0;
}

/* what a cookie is bound to (jumping.core.node.address_bytes): repr((host, port)) */
static int
cookie_of(Gate *g, const struct sockaddr_storage *ss, unsigned char *cookie)
{
    char host[INET6_ADDRSTRLEN], text[INET6_ADDRSTRLEN + 16];
    int port;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host)) == NULL)
            return -1;
        port = ntohs(a->sin_port);
    } else {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)) == NULL)
            return -1;
        port = ntohs(a->sin6_port);
    }
    int n = snprintf(text, sizeof(text), "('%s', %d)", host, port);
    if (n < 0 || (size_t)n >= sizeof(text))
        return -1;
    return mac16(g->secret, NULL, 0, (const unsigned char *)text, (size_t)n, cookie);
}

static int
source_allow(Gate *g, const unsigned char *k)
{
    unsigned long long h = 0;
    for (int i = 0; i < 9; i++)
        h = (h ^ k[i]) * g->seed;
    Slot *s = &g->slots[(h >> 29) & (g->nslots - 1)];
    double now = g->now;
    if (!s->used || memcmp(s->k, k, 9) != 0) {
        memcpy(s->k, k, 9);
        s->used = 1;
        s->tokens = g->src_burst;
        s->at = now;
    } else if (now > s->at) {
        double t = s->tokens + (now - s->at) * g->src_rate;
        s->tokens = t < g->src_burst ? t : g->src_burst;
        s->at = now;
    }
    if (s->tokens >= 1.0) {
        s->tokens -= 1.0;
        return 1;
    }
    return 0;
}

/* one occurrence of reason r from source k: the ledger's Misra-Gries step */
static void
tally(Gate *g, int r, const unsigned char *k)
{
    g->counts[r]++;
    g->pending++;
    MGItem *mg = g->mg[r];
    int len = g->mg_len[r];
    for (int i = 0; i < len; i++) {
        if (memcmp(mg[i].k, k, 9) == 0) {
            mg[i].n++;
            return;
        }
    }
    if (len < g->tracked) {
        memcpy(mg[len].k, k, 9);
        mg[len].n = 1;
        g->mg_len[r] = len + 1;
        return;
    }
    int j = 0; /* full: a new source takes one from everybody */
    for (int i = 0; i < len; i++) {
        if (mg[i].n > 1) {
            mg[j] = mg[i];
            mg[j].n--;
            j++;
        }
    }
    g->mg_len[r] = j;
}

/* 1: the gate took the datagram (refused, maybe answered); 0: hand it on */
static int
gate_one(Gate *g, int fd, const unsigned char *d, const struct sockaddr_storage *ss,
         socklen_t sslen)
{
    static const unsigned char zero[16];
    unsigned char k[9], tag[16], cookie[16];
    if (!source_key(ss, k))
        return 0;
    if (mac16(g->mac1, NULL, 0, d, G_MAC_OFF, tag) < 0)
        return 0;
    if (CRYPTO_memcmp(tag, d + G_MAC_OFF, 16) != 0) {
        tally(g, R_BAD_MAC1, k);
        return 1;
    }
    if (!g->armed)
        return 0; /* cookies not required: the core answers it */
    int have_cookie = 0;
    if (memcmp(d + G_MAC_OFF + 16, zero, 16) != 0) {
        if (cookie_of(g, ss, cookie) < 0 ||
            mac16(g->m2, cookie, 16, d, G_MAC_OFF + 16, tag) < 0)
            return 0;
        if (CRYPTO_memcmp(tag, d + G_MAC_OFF + 16, 16) == 0)
            return 0; /* proven: the core's to answer */
        have_cookie = 1;
    }
    if (!have_cookie && g->allowance > 0 && cookie_of(g, ss, cookie) < 0)
        return 0;
    g->valid++;
    if (g->allowance > 0 && source_allow(g, k)) {
        unsigned char reply[G_REPLY_LEN], nonce[12];
        int n = 0;
        g->allowance--;
        g->nonce_n++;
        reply[0] = 3;
        reply[1] = 1;
        reply[2] = reply[3] = 0;
        memcpy(reply + 4, d + 4, 4); /* to the initiator's sender index */
        memcpy(reply + 8, g->prefix, 16);
        memset(nonce, 0, 4);
        for (int i = 0; i < 8; i++)
            nonce[4 + i] = reply[24 + i] = (unsigned char)(g->nonce_n >> (8 * i));
        if (EVP_EncryptInit_ex(g->seal, NULL, NULL, NULL, nonce) != 1 ||
            EVP_EncryptUpdate(g->seal, NULL, &n, d + G_MAC_OFF, 16) != 1 ||
            EVP_EncryptUpdate(g->seal, reply + 32, &n, cookie, 16) != 1 ||
            EVP_EncryptFinal_ex(g->seal, reply + 48, &n) != 1 ||
            EVP_CIPHER_CTX_ctrl(g->seal, EVP_CTRL_AEAD_GET_TAG, 16, reply + 48) != 1) {
            g->send_errors++;
        } else if (sendto(fd, reply, sizeof(reply), 0, (const struct sockaddr *)ss, sslen) < 0) {
            g->send_errors++;
        }
        tally(g, R_COOKIE_REQUIRED, k);
    } else {
        tally(g, R_COOKIE_REPLY_LIMITED, k);
    }
    return 1;
}

static PyObject *s_created, *s_replay, *s_check; /* interned names */

/* a DATA message of keypair kp: 1 if it is a replay the core would refuse, else 0 */
static int
gate_replay(Gate *g, PyObject *kp, const unsigned char *d, const unsigned char *k)
{
    int i = 0;
    while (i < g->rp_len && g->rp[i].kp != kp)
        i++;
    if (i == G_REPLAY_KEYS)
        return 0; /* the table of this pass is full: the core counts it */
    PyObject *o = PyObject_GetAttr(kp, s_created);
    double created = o == NULL ? -1.0 : PyFloat_AsDouble(o);
    Py_XDECREF(o);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (g->now - created >= g->key_lifetime)
        return 0; /* KEY_EXPIRED, the core's */
    unsigned long long counter = 0;
    for (int b = 7; b >= 0; b--)
        counter = counter << 8 | d[8 + b];
    PyObject *w = PyObject_GetAttr(kp, s_replay);
    PyObject *c = w == NULL ? NULL : PyLong_FromUnsignedLongLong(counter);
    PyObject *r = c == NULL ? NULL : PyObject_CallMethodOneArg(w, s_check, c);
    int fresh = r == NULL ? -1 : PyObject_IsTrue(r);
    Py_XDECREF(r);
    Py_XDECREF(c);
    Py_XDECREF(w);
    if (fresh != 0) {
        if (fresh < 0)
            PyErr_Clear();
        return 0; /* a new counter (the core authenticates it), or no window */
    }
    if (i == g->rp_len) {
        Py_INCREF(kp);
        g->rp[i].kp = kp;
        g->rp[i].n = 0;
        memcpy(g->rp[i].k, k, 9);
        g->rp[i].from_k = 0;
        g->rp_len++;
    }
    g->rp[i].n++;
    if (memcmp(g->rp[i].k, k, 9) == 0)
        g->rp[i].from_k++;
    g->pending++;
    return 1;
}

/* a DATA message whose receiver index no keypair has: 1 (refused), else 0 */
static int
gate_data(Gate *g, const unsigned char *d, const struct sockaddr_storage *ss)
{
    unsigned char k[9];
    unsigned long idx = (unsigned long)d[4] | (unsigned long)d[5] << 8 |
                        (unsigned long)d[6] << 16 | (unsigned long)d[7] << 24;
    if (!source_key(ss, k))
        return 0;
    PyObject *key = PyLong_FromUnsignedLong(idx);
    if (key == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *kp = PyDict_GetItemWithError(g->index, key);
    Py_DECREF(key);
    if (kp != NULL)
        return gate_replay(g, kp, d, k);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    tally(g, R_UNKNOWN_INDEX, k);
    return 1;
}

static PyMethodDef Gate_methods[] = {
    {"bind", (PyCFunction)Gate_bind, METH_VARARGS,
     "bind(mac1_key, index, key_lifetime): the gateway's mac1 key, the core's receiver index "
     "dict and its key lifetime"},
    {"arm_cookies", (PyCFunction)Gate_arm_cookies, METH_VARARGS,
     "arm_cookies(now, secret, subkey, nonce_prefix, allowance, src_rate, src_burst): "
     "refuse initiations without a valid mac2 in this read pass (cookies are required)"},
    {"cookies_off", (PyCFunction)Gate_cookies_off, METH_NOARGS,
     "cookies_off(): hand initiations with a valid mac1 on (cookies are not required)"},
    {"drain", (PyCFunction)Gate_drain, METH_NOARGS,
     "drain() -> (valid, send_errors, [(reason, count, [(prefix, n)])]); resets the counts"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Gate_members[] = {
    {"armed", T_INT, offsetof(Gate, armed), READONLY,
     "the cookie part is armed (cookies are required)"},
    {"pending", T_LONG, offsetof(Gate, pending), READONLY,
     "datagrams refused since the last drain"},
    {"now", T_DOUBLE, offsetof(Gate, now), 0, "the core's time, for this read pass"},
    {"last_count", T_LONG, offsetof(Gate, last_count), READONLY,
     "datagrams the gate took in the last recv_burst call"},
    {"last_bytes", T_LONG, offsetof(Gate, last_bytes), READONLY, "their bytes"},
    {"allowance", T_LONG, offsetof(Gate, allowance), READONLY,
     "cookie replies left in this pass's node budget"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject GateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "jumping.service._fastio.Gate",
    .tp_basicsize = sizeof(Gate),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The initiation gate: GatewayCore's refusals that need no session's keys "
              "(a malformed header, bad mac1, no cookie while cookies are required, unknown "
              "receiver index, a replay a live window saw), done in recv_burst's loop.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Gate_init,
    .tp_dealloc = (destructor)Gate_dealloc,
    .tp_methods = Gate_methods,
    .tp_members = Gate_members,
};

static PyObject *
recv_burst(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 && nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "recv_burst(fd, size, limit, count, gro[, gate])");
        return NULL;
    }
    Gate *gate = NULL;
    if (nargs == 6 && args[5] != Py_None) {
        if (!PyObject_TypeCheck(args[5], &GateType)) {
            PyErr_SetString(PyExc_TypeError, "recv_burst: gate must be a Gate or None");
            return NULL;
        }
        gate = (Gate *)args[5];
        gate->last_count = 0;
        gate->last_bytes = 0;
        if (gate->index == NULL)
            gate = NULL; /* not bound */
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
    Py_ssize_t gated = 0; /* datagrams the gate took: they count towards count and limit */
    Py_ssize_t gated_bytes = 0;
    PyObject *b = NULL;   /* a buffer the gate left unused, for the next datagram */
    while (total < limit && PyList_GET_SIZE(out) + gated < count) {
        if (b == NULL)
            b = PyBytes_FromStringAndSize(NULL, size);
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
            Py_CLEAR(b);
            if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR)
                break;
            if (PyList_GET_SIZE(out) + gated > 0)
                break; /* hand over what was read; the caller meets the next error itself */
            errno = e;
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
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
        /* one datagram (not a coalesced run): the gate's to look at */
        if (gate != NULL && (seg == 0 || seg >= n)) {
            const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(b);
            int took = 0;
            if (n < 4 || d[1] != 1 || d[0] < 1 || d[0] > 6 || ((d[2] || d[3]) && d[0] != 6)) {
                unsigned char k[9];
                if (source_key(&ss, k)) {
                    tally(gate, R_MALFORMED_HEADER, k);
                    took = 1;
                }
            } else if (n >= G_HDR_LEN && d[2] == 0 && d[3] == 0) {
                if (d[0] == 1 && n == G_INIT_LEN)
                    took = gate_one(gate, (int)fd, d, &ss, msg.msg_namelen);
                else if (d[0] == 4)
                    took = gate_data(gate, d, &ss);
            }
            if (took) {
                gated++;
                gated_bytes += n;
                total += n;
                continue; /* b is reused for the next datagram */
            }
        }
        if (n < size && _PyBytes_Resize(&b, n) < 0)
            goto fail;
        PyObject *addr;
        if (last_addr != NULL && msg.msg_namelen == last_len &&
            memcmp(&ss, &last, last_len) == 0) {
            addr = last_addr;
            Py_INCREF(addr);
        } else {
            addr = make_address(&ss);
            if (addr == NULL)
                goto fail;
            Py_XDECREF(last_addr);
            last_addr = addr;
            Py_INCREF(last_addr);
            last_len = msg.msg_namelen;
            memcpy(&last, &ss, last_len);
        }
        PyObject *seg_obj = PyLong_FromLong(seg);
        if (seg_obj == NULL) {
            Py_DECREF(addr);
            goto fail;
        }
        PyObject *t = PyTuple_New(3);
        if (t == NULL) {
            Py_DECREF(addr);
            Py_DECREF(seg_obj);
            goto fail;
        }
        PyTuple_SET_ITEM(t, 0, b);
        b = NULL; /* the tuple's now */
        PyTuple_SET_ITEM(t, 1, addr);
        PyTuple_SET_ITEM(t, 2, seg_obj);
        int r = PyList_Append(out, t);
        Py_DECREF(t);
        if (r < 0)
            goto fail;
        total += n;
    }
    Py_XDECREF(b);
    Py_XDECREF(last_addr);
    if (gate != NULL) {
        gate->last_count = (long)gated;
        gate->last_bytes = (long)gated_bytes;
    }
    return out;
fail:
    Py_XDECREF(b);
    Py_XDECREF(last_addr);
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"read_burst", (PyCFunction)(void (*)(void))read_burst, METH_FASTCALL,
     "read_burst(fd, size, limit) -> [bytes]: read until EAGAIN or limit bytes"},
    {"recv_burst", (PyCFunction)(void (*)(void))recv_burst, METH_FASTCALL,
     "recv_burst(fd, size, limit, count, gro[, gate]) -> [(bytes, address, segment)]: "
     "recvmsg until EAGAIN, limit bytes or count datagrams; an armed Gate takes the "
     "initiations the core would refuse for want of a cookie (gate.last_count of them)"},
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
    if (PyType_Ready(&GateType) < 0)
        return NULL;
    s_created = PyUnicode_InternFromString("created");
    s_replay = PyUnicode_InternFromString("replay");
    s_check = PyUnicode_InternFromString("check");
    if (s_created == NULL || s_replay == NULL || s_check == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&GateType);
    if (PyModule_AddObject(m, "Gate", (PyObject *)&GateType) < 0) {
        Py_DECREF(&GateType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
