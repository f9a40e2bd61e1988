/*
 * jumping.core._dataplane: the data plane's per-packet loops in C (optional).
 *
 * One type, Aead: ChaCha20-Poly1305 (RFC 8439) through OpenSSL's libcrypto, with one
 * encryption and one decryption context made once per key and re-armed with each nonce
 * (cryptography's AEAD copies a fresh context per call, about half of the cost of sealing
 * a 1400-byte packet). Besides encrypt/decrypt with cryptography's signature, it has the
 * data plane's loops: seal one message behind its header, open one, seal a TCP super-packet
 * as DATA_SEGMENT pieces, and join in-order pieces of a super-packet (replay window
 * included). jumping/core/aead.py is the pure-Python twin of every method, and the
 * reference: the tests run both and compare them.
 *
 * Nothing here allocates per piece beyond the Python object it returns.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <openssl/evp.h>
#include <string.h>

#define TAG 16
#define HDR 16
#define T_SEGMENT 6
#define VERSION 1
#define LAST 0x8000u
#define MAX_PIECES 0x7FFFu

static PyObject *InvalidTag; /* cryptography.exceptions.InvalidTag */
static PyTypeObject WindowType; /* the C replay window, below */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
} Aead;

static void
Aead_dealloc(Aead *self)
{
    EVP_CIPHER_CTX_free(self->enc); /* frees and cleanses the key schedule */
    EVP_CIPHER_CTX_free(self->dec);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* An Aead lives as long as its keys, and so does the libcrypto memory it owns: allocated
 * from malloc like its contexts, not from Python's small-object pools, where an idle
 * session's expired keys would leave a hole among the session's long-lived objects that no
 * later allocation of the idle gateway fills (issue 18: pymalloc pools cannot be returned
 * while one block in them lives; malloc_trim returns the freed pages here). */
static PyObject *
Aead_alloc(PyTypeObject *type, Py_ssize_t nitems)
{
    (void)nitems;
    PyObject *obj = PyMem_RawCalloc(1, (size_t)type->tp_basicsize);
    if (obj == NULL)
        return PyErr_NoMemory();
    return PyObject_Init(obj, type);
}

static void
Aead_free(void *obj)
{
    PyMem_RawFree(obj);
}

static int
Aead_init(Aead *self, PyObject *args, PyObject *kwds)
{
    Py_buffer key;
    static char *kwlist[] = {"key", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*", kwlist, &key))
        return -1;
    if (key.len != 32) {
        PyBuffer_Release(&key);
        EVP_CIPHER_CTX_free(self->enc);
        EVP_CIPHER_CTX_free(self->dec);
        self->enc = self->dec = NULL;
        PyErr_SetString(PyExc_ValueError, "ChaCha20Poly1305 key must be 32 bytes.");
        return -1;
    }
    EVP_CIPHER_CTX_free(self->enc);
    EVP_CIPHER_CTX_free(self->dec);
    self->enc = EVP_CIPHER_CTX_new();
    self->dec = EVP_CIPHER_CTX_new();
    int ok = self->enc && self->dec
        && EVP_EncryptInit_ex(self->enc, EVP_chacha20_poly1305(), NULL, key.buf, NULL) == 1
        && EVP_DecryptInit_ex(self->dec, EVP_chacha20_poly1305(), NULL, key.buf, NULL) == 1;
    PyBuffer_Release(&key);
    if (!ok) {
        EVP_CIPHER_CTX_free(self->enc);
        EVP_CIPHER_CTX_free(self->dec);
        self->enc = self->dec = NULL;
        PyErr_SetString(PyExc_RuntimeError, "libcrypto refused ChaCha20-Poly1305");
        return -1;
    }
    return 0;
}

/* out = ciphertext of (a, b) || tag; aad as given. 0 on success. */
static int
seal2(EVP_CIPHER_CTX *c, const unsigned char *nonce, const unsigned char *aad, int aadlen,
      const unsigned char *a, int alen, const unsigned char *b, int blen, unsigned char *out)
{
    int n;
    if (EVP_EncryptInit_ex(c, NULL, NULL, NULL, nonce) != 1)
        return -1;
    if (aadlen && EVP_EncryptUpdate(c, NULL, &n, aad, aadlen) != 1)
        return -1;
    if (alen && EVP_EncryptUpdate(c, out, &n, a, alen) != 1)
        return -1;
    if (blen && EVP_EncryptUpdate(c, out + alen, &n, b, blen) != 1)
        return -1;
    if (EVP_EncryptFinal_ex(c, out + alen + blen, &n) != 1)
        return -1;
    return EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, TAG, out + alen + blen) == 1 ? 0 : -1;
}

/* Decrypt in (len bytes of ciphertext followed by the tag): the first alen bytes of
 * plaintext into a, the rest into b. 0 if it authenticated. */
static int
open2(EVP_CIPHER_CTX *c, const unsigned char *nonce, const unsigned char *aad, int aadlen,
      const unsigned char *in, int len, unsigned char *a, int alen, unsigned char *b)
{
    int n;
    if (EVP_DecryptInit_ex(c, NULL, NULL, NULL, nonce) != 1)
        return -1;
    if (aadlen && EVP_DecryptUpdate(c, NULL, &n, aad, aadlen) != 1)
        return -1;
    if (alen && EVP_DecryptUpdate(c, a, &n, in, alen) != 1)
        return -1;
    if (len > alen && EVP_DecryptUpdate(c, b, &n, in + alen, len - alen) != 1)
        return -1;
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, TAG, (void *)(in + len)) != 1)
        return -1;
    return EVP_DecryptFinal_ex(c, b + (len - alen), &n) == 1 ? 0 : -1;
}

/* an Aead whose __init__ did not succeed has no contexts: refuse, never crash */
#define NEED_KEY(self)                                                               \
    do {                                                                             \
        if ((self)->enc == NULL || (self)->dec == NULL) {                            \
            PyErr_SetString(PyExc_ValueError, "Aead has no key");                    \
            return NULL;                                                             \
        }                                                                            \
    } while (0)

static int
check_nonce(Py_buffer *nonce)
{
    if (nonce->len != 12) {
        PyErr_SetString(PyExc_ValueError, "Nonce must be 12 bytes");
        return -1;
    }
    return 0;
}

static int
check_size(Py_ssize_t n)
{
    if (n > (1 << 30)) {
        PyErr_SetString(PyExc_OverflowError, "Data or associated data too long.");
        return -1;
    }
    return 0;
}

/* encrypt(nonce, data, associated_data) -> ciphertext || tag (as cryptography's) */
static PyObject *
Aead_encrypt(Aead *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer nonce, data, aad = {0};
    PyObject *out = NULL;
    NEED_KEY(self);
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "encrypt(nonce, data, associated_data)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &nonce, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&nonce);
        return NULL;
    }
    if (args[2] != Py_None && PyObject_GetBuffer(args[2], &aad, PyBUF_SIMPLE) < 0)
        goto done;
    if (check_nonce(&nonce) < 0 || check_size(data.len) < 0 || check_size(aad.len) < 0)
        goto done;
    out = PyBytes_FromStringAndSize(NULL, data.len + TAG);
    if (out == NULL)
        goto done;
    if (seal2(self->enc, nonce.buf, aad.buf, (int)aad.len, data.buf, (int)data.len, NULL, 0,
              (unsigned char *)PyBytes_AS_STRING(out)) < 0) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed to encrypt");
    }
done:
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&data);
    if (aad.obj)
        PyBuffer_Release(&aad);
    return out;
}

/* decrypt(nonce, data, associated_data) -> plaintext; InvalidTag if it does not
 * authenticate (as cryptography's) */
static PyObject *
Aead_decrypt(Aead *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer nonce, data, aad = {0};
    PyObject *out = NULL;
    NEED_KEY(self);
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decrypt(nonce, data, associated_data)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &nonce, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&nonce);
        return NULL;
    }
    if (args[2] != Py_None && PyObject_GetBuffer(args[2], &aad, PyBUF_SIMPLE) < 0)
        goto done;
    if (check_nonce(&nonce) < 0 || check_size(data.len) < 0 || check_size(aad.len) < 0)
        goto done;
    if (data.len < TAG) {
        PyErr_SetNone(InvalidTag);
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, data.len - TAG);
    if (out == NULL)
        goto done;
    if (open2(self->dec, nonce.buf, aad.buf, (int)aad.len, data.buf, (int)(data.len - TAG),
              NULL, 0, (unsigned char *)PyBytes_AS_STRING(out)) < 0) {
        Py_CLEAR(out);
        PyErr_SetNone(InvalidTag);
    }
done:
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&data);
    if (aad.obj)
        PyBuffer_Release(&aad);
    return out;
}

/* seal(header, plaintext) -> header || AEAD(plaintext): the 16-byte transport header is
 * the associated data and its last 8 bytes (the counter) the nonce's. */
static PyObject *
Aead_seal(Aead *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer h, p;
    PyObject *out = NULL;
    unsigned char nonce[12] = {0};
    NEED_KEY(self);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "seal(header, plaintext)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &h, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &p, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&h);
        return NULL;
    }
    if (h.len != HDR) {
        PyErr_SetString(PyExc_ValueError, "a transport header is 16 bytes");
        goto done;
    }
    if (check_size(p.len) < 0)
        goto done;
    out = PyBytes_FromStringAndSize(NULL, HDR + p.len + TAG);
    if (out == NULL)
        goto done;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    memcpy(o, h.buf, HDR);
    memcpy(nonce + 4, o + 8, 8);
    if (seal2(self->enc, nonce, o, HDR, p.buf, (int)p.len, NULL, 0, o + HDR) < 0) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed to encrypt");
    }
done:
    PyBuffer_Release(&h);
    PyBuffer_Release(&p);
    return out;
}

/* open(datagram) -> plaintext, or None if it does not authenticate (the caller parsed
 * the 16-byte header). */
static PyObject *
Aead_open(Aead *self, PyObject *arg)
{
    Py_buffer d;
    PyObject *out = NULL;
    unsigned char nonce[12] = {0};
    NEED_KEY(self);
    if (PyObject_GetBuffer(arg, &d, PyBUF_SIMPLE) < 0)
        return NULL;
    if (d.len < HDR + TAG || check_size(d.len) < 0) {
        PyBuffer_Release(&d);
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    const unsigned char *in = d.buf;
    memcpy(nonce + 4, in + 8, 8);
    out = PyBytes_FromStringAndSize(NULL, d.len - HDR - TAG);
    if (out != NULL && open2(self->dec, nonce, in, HDR, in + HDR, (int)(d.len - HDR - TAG),
                             NULL, 0, (unsigned char *)PyBytes_AS_STRING(out)) < 0) {
        Py_DECREF(out);
        out = Py_None;
        Py_INCREF(out);
    }
    PyBuffer_Release(&d);
    return out;
}

static void
put_header(unsigned char *h, unsigned chunk, uint32_t ri, uint64_t counter)
{
    h[0] = T_SEGMENT;
    h[1] = VERSION;
    h[2] = chunk & 0xFF;
    h[3] = chunk >> 8;
    for (int k = 0; k < 4; k++)
        h[4 + k] = (ri >> (8 * k)) & 0xFF;
    for (int k = 0; k < 8; k++)
        h[8 + k] = (counter >> (8 * k)) & 0xFF;
}

/* seal_pieces(packet, hl, gso_size, remote_index, counter) -> [datagram]: one
 * DATA_SEGMENT datagram per gso_size piece of the payload, each sealed on its own behind
 * the super-packet's header (jumping/core/segments.py); counters from ``counter`` on. */
static PyObject *
Aead_seal_pieces(Aead *self, PyObject *args)
{
    Py_buffer pk;
    Py_ssize_t hl, gso;
    unsigned long ri;
    unsigned long long c;
    PyObject *out = NULL;
    NEED_KEY(self);
    if (!PyArg_ParseTuple(args, "y*nnkK", &pk, &hl, &gso, &ri, &c))
        return NULL;
    if (hl < 0 || hl > pk.len || gso <= 0 || check_size(pk.len) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "bad header length or segment size");
        goto done;
    }
    Py_ssize_t payload = pk.len - hl;
    Py_ssize_t count = (payload + gso - 1) / gso;
    if (count < 1)
        count = 1;
    out = PyList_New(count);
    if (out == NULL)
        goto done;
    const unsigned char *p = pk.buf;
    unsigned char nonce[12] = {0};
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_ssize_t off = k * gso;
        Py_ssize_t n = payload - off < gso ? payload - off : gso;
        if (n < 0)
            n = 0;
        PyObject *d = PyBytes_FromStringAndSize(NULL, HDR + hl + n + TAG);
        if (d == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        unsigned char *o = (unsigned char *)PyBytes_AS_STRING(d);
        unsigned chunk = (unsigned)k | (k == count - 1 ? LAST : 0);
        put_header(o, chunk, (uint32_t)ri, c + (unsigned long long)k);
        memcpy(nonce + 4, o + 8, 8);
        if (seal2(self->enc, nonce, o, HDR, p, (int)hl, p + hl + off, (int)n, o + HDR) < 0) {
            Py_DECREF(d);
            Py_CLEAR(out);
            PyErr_SetString(PyExc_RuntimeError, "libcrypto failed to encrypt");
            goto done;
        }
        PyList_SET_ITEM(out, k, d);
    }
done:
    PyBuffer_Release(&pk);
    return out;
}

/* The replay window of jumping/core/replay.py (its blocks: an array('Q') of 64-bit words),
 * moved forward to ``counter`` (> top): blocks passed over are cleared, the counter's bit
 * set. Nothing is allocated, so it cannot fail half way. */
static void
replay_advance(unsigned long long *blocks, Py_ssize_t mask, long long *top,
               unsigned long long counter)
{
    long long index = (long long)(counter >> 6);
    long long current = *top >= 0 ? (*top >> 6) : -1;
    long long diff = index - current;
    Py_ssize_t i = (Py_ssize_t)(index & mask);
    if (diff > 0) {
        if (diff > mask)
            diff = mask + 1;
        for (long long k = 1; k <= diff; k++)
            blocks[(current + k) & mask] = 0; /* the counter's own block is among them */
    }
    blocks[i] |= 1ULL << (counter & 63);
    *top = (long long)counter;
}

/* open_pieces(datagrams, i, index, replay, nxt, template, gso, end, payload, pieces)
 *   -> (i, nxt, end, last, taken_bytes)
 * The DATA_SEGMENT datagrams from datagrams[i] on that are, in order, the next pieces of
 * a run (receiver index ``index``, next piece ``nxt``, header ``template``, segment size
 * ``gso``, payload bytes so far ``end`` of ``payload``) with counters above the replay
 * window's top: each authenticated, its counter marked in ``replay``, its payload appended
 * to ``pieces``. Stops at the first datagram that is not such a piece (nothing was changed
 * for it) and after the last piece. */
static PyObject *
Aead_open_pieces(Aead *self, PyObject *args)
{
    PyObject *datagrams, *replay, *pieces;
    Py_ssize_t i, nxt, gso, end, payload;
    Py_buffer index, tpl;
    NEED_KEY(self);
    if (!PyArg_ParseTuple(args, "O!ny*Ony*nnnO!", &PyList_Type, &datagrams, &i, &index,
                          &replay, &nxt, &tpl, &gso, &end, &payload, &PyList_Type, &pieces))
        return NULL;
    PyObject *res = NULL, *blocks = NULL, *topo = NULL, *masko = NULL;
    Py_buffer bb = {0};
    Py_ssize_t hl = tpl.len, taken = 0, mask;
    int last = 0;
    long long top;
    if (index.len != 4) {
        PyErr_SetString(PyExc_ValueError, "a receiver index is 4 bytes");
        goto done;
    }
    /* the C window is its own buffer; the Python one's blocks are an array('Q') */
    blocks = Py_IS_TYPE(replay, &WindowType) ? Py_NewRef(replay)
                                             : PyObject_GetAttrString(replay, "blocks");
    topo = PyObject_GetAttrString(replay, "top");
    masko = PyObject_GetAttrString(replay, "mask");
    if (blocks == NULL || topo == NULL || masko == NULL)
        goto done;
    if (PyObject_GetBuffer(blocks, &bb, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
        PyErr_SetString(PyExc_TypeError, "replay.blocks must be a writable array('Q')");
        goto done;
    }
    if (bb.itemsize != 8 || bb.format == NULL || strcmp(bb.format, "Q") != 0) {
        PyErr_SetString(PyExc_TypeError, "replay.blocks must be a writable array('Q')");
        goto done;
    }
    mask = PyLong_AsSsize_t(masko);
    if (mask == -1 && PyErr_Occurred())
        goto done;
    if (mask < 0 || mask >= bb.len / 8) {
        PyErr_SetString(PyExc_ValueError, "replay window inconsistent");
        goto done;
    }
    top = PyLong_AsLongLong(topo);
    if (top == -1 && PyErr_Occurred()) {
        /* a top at or above 2**63: no counter can pass "above top" here; take none */
        PyErr_Clear();
        res = Py_BuildValue("nnnOn", i, nxt, end, Py_False, (Py_ssize_t)0);
        goto done;
    }
    long long top0 = top;
    unsigned char head[128];
    unsigned char nonce[12] = {0};
    Py_ssize_t n = PyList_GET_SIZE(datagrams);
    if (hl > (Py_ssize_t)sizeof(head))
        n = 0; /* an IPv4+TCP header is at most 120 bytes */
    while (i < n) {
        PyObject *d = PyList_GET_ITEM(datagrams, i);
        if (!PyBytes_Check(d))
            break;
        const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(d);
        Py_ssize_t len = PyBytes_GET_SIZE(d);
        if (len < HDR || b[0] != T_SEGMENT || memcmp(b + 4, index.buf, 4) != 0)
            break;
        unsigned chunk = b[2] | (b[3] << 8);
        unsigned long long counter = 0;
        for (int k = 7; k >= 0; k--)
            counter = (counter << 8) | b[8 + k];
        if (b[1] != VERSION || (Py_ssize_t)(chunk & MAX_PIECES) != nxt)
            break;
        if (top >= 0 && counter <= (unsigned long long)top)
            break;
        if (counter > (unsigned long long)LLONG_MAX)
            break; /* never below COUNTER_LIMIT... but then the ordinary path decides */
        Py_ssize_t m = len - HDR - TAG - hl;
        int is_last = (chunk & LAST) != 0;
        if (is_last) {
            if (m <= 0 || m > gso || end + m != payload)
                break;
        } else if (m != gso || end + m >= payload)
            break;
        PyObject *piece = PyBytes_FromStringAndSize(NULL, m);
        if (piece == NULL)
            goto failed;
        memcpy(nonce + 4, b + 8, 8);
        if (open2(self->dec, nonce, b, HDR, b + HDR, (int)(len - HDR - TAG), head, (int)hl,
                  (unsigned char *)PyBytes_AS_STRING(piece)) < 0
            || memcmp(head, tpl.buf, hl) != 0) {
            Py_DECREF(piece); /* the ordinary path counts it */
            break;
        }
        if (PyList_Append(pieces, piece) < 0) {
            Py_DECREF(piece);
            goto failed;
        }
        replay_advance((unsigned long long *)bb.buf, mask, &top, counter);
        Py_DECREF(piece);
        end += m;
        nxt += 1;
        taken += len;
        i += 1;
        if (is_last) {
            last = 1;
            break;
        }
    }
    if (top != top0) {
        PyObject *t = PyLong_FromLongLong(top);
        if (t == NULL || PyObject_SetAttrString(replay, "top", t) < 0) {
            Py_XDECREF(t);
            goto done;
        }
        Py_DECREF(t);
    }
    res = Py_BuildValue("nnnOn", i, nxt, end, last ? Py_True : Py_False, taken);
    goto done;
failed:
    /* the pieces before this one are marked in the window: its top must say so too, or
     * their counters (and the blocks cleared for them) would pass the replay check again */
    if (top != top0) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyObject *t = PyLong_FromLongLong(top);
        if (t == NULL || PyObject_SetAttrString(replay, "top", t) < 0)
            PyErr_Clear(); /* the first error is the one raised */
        Py_XDECREF(t);
        PyErr_Restore(et, ev, tb);
    }
done:
    if (bb.obj != NULL)
        PyBuffer_Release(&bb);
    Py_XDECREF(blocks);
    Py_XDECREF(topo);
    Py_XDECREF(masko);
    PyBuffer_Release(&index);
    PyBuffer_Release(&tpl);
    return res;
}

static PyMethodDef Aead_methods[] = {
    {"encrypt", (PyCFunction)(void (*)(void))Aead_encrypt, METH_FASTCALL,
     "encrypt(nonce, data, associated_data) -> ciphertext and tag"},
    {"decrypt", (PyCFunction)(void (*)(void))Aead_decrypt, METH_FASTCALL,
     "decrypt(nonce, data, associated_data) -> plaintext; InvalidTag"},
    {"seal", (PyCFunction)(void (*)(void))Aead_seal, METH_FASTCALL,
     "seal(header, plaintext) -> header + AEAD(plaintext)"},
    {"open", (PyCFunction)Aead_open, METH_O, "open(datagram) -> plaintext or None"},
    {"seal_pieces", (PyCFunction)Aead_seal_pieces, METH_VARARGS,
     "seal_pieces(packet, hl, gso_size, remote_index, counter) -> [datagram]"},
    {"open_pieces", (PyCFunction)Aead_open_pieces, METH_VARARGS,
     "open_pieces(datagrams, i, index, replay, nxt, template, gso, end, payload, pieces)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject AeadType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "jumping.core._dataplane.Aead",
    .tp_basicsize = sizeof(Aead),
    .tp_dealloc = (destructor)Aead_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ChaCha20-Poly1305 with reused libcrypto contexts, and the data plane's loops",
    .tp_methods = Aead_methods,
    .tp_init = (initproc)Aead_init,
    .tp_new = PyType_GenericNew,
    .tp_alloc = Aead_alloc,
    .tp_free = Aead_free,
};

/* ------------------------------------------------------------------ ReplayWindow
 * jumping/core/replay.py's window (RFC 6479: a ring of 64-bit blocks) as one object with
 * its blocks inline: for the default 8192 bits it is one malloc'd block of about 1 KiB,
 * where the Python class is three objects (the window, its array and the array's buffer),
 * two of them small and freed from pymalloc's pools among long-lived objects when an idle
 * session's keys expire (issue 18). Same semantics, same attributes (``blocks`` is a
 * writable memoryview of format 'Q' over the blocks); the tests run both. */
typedef struct {
    PyObject_VAR_HEAD
    unsigned long long top;
    int empty; /* no counter accepted yet: top reads -1 */
    Py_ssize_t bits, size, mask;
    Py_ssize_t shape, stride; /* for the buffer protocol: words, 8 */
    unsigned long long blocks[1];
} Window;

static PyObject *
Window_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"bits", NULL};
    PyObject *bo = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O", kwlist, &bo))
        return NULL;
    long bits = 8192;
    if (bo != NULL) {
        bits = PyLong_Check(bo) && !PyBool_Check(bo) ? PyLong_AsLong(bo) : -1;
        if (bits == -1 && PyErr_Occurred())
            PyErr_Clear();
        if (bits < 128 || bits > 65536 || (bits & (bits - 1))) {
            PyErr_Format(PyExc_ValueError,
                         "replay window must be a power of two in 128..65536, got %R", bo);
            return NULL;
        }
    }
    Py_ssize_t words = bits / 64;
    Window *w = (Window *)type->tp_alloc(type, words - 1);
    if (w == NULL)
        return NULL;
    w->empty = 1;
    w->top = 0;
    w->bits = bits;
    w->size = bits - 64;
    w->mask = words - 1;
    w->shape = words;
    w->stride = 8;
    memset(w->blocks, 0, (size_t)words * 8);
    return (PyObject *)w;
}

/* the counter as a 64-bit value; 0 with *ok = 0 if it is not one (negative or >= 2**64:
 * never accepted); -1 with an exception if it is not an int */
static int
window_counter(PyObject *o, unsigned long long *c)
{
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "a counter is an int, not %.100s", Py_TYPE(o)->tp_name);
        return -1;
    }
    *c = PyLong_AsUnsignedLongLong(o);
    if (*c == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

static int
window_check(Window *w, unsigned long long c)
{
    if (w->empty || c > w->top)
        return 1;
    if (w->top - c >= (unsigned long long)w->size)
        return 0;
    return !((w->blocks[(c >> 6) & w->mask] >> (c & 63)) & 1);
}

static int
window_update(Window *w, unsigned long long c)
{
    if (w->empty || c > w->top) {
        long long index = (long long)(c >> 6);
        long long current = w->empty ? -1 : (long long)(w->top >> 6);
        long long diff = index - current;
        if (diff > 0) {
            if (diff > w->mask)
                diff = w->mask + 1;
            for (long long k = 1; k <= diff; k++)
                w->blocks[(current + k) & w->mask] = 0;
        }
        w->top = c;
        w->empty = 0;
    } else if (w->top - c >= (unsigned long long)w->size)
        return 0;
    unsigned long long *b = &w->blocks[(c >> 6) & w->mask];
    unsigned long long bit = 1ULL << (c & 63);
    if (*b & bit)
        return 0;
    *b |= bit;
    return 1;
}

static PyObject *
Window_check(Window *w, PyObject *o)
{
    unsigned long long c;
    int ok = window_counter(o, &c);
    if (ok < 0)
        return NULL;
    return PyBool_FromLong(ok && window_check(w, c));
}

static PyObject *
Window_update(Window *w, PyObject *o)
{
    unsigned long long c;
    int ok = window_counter(o, &c);
    if (ok < 0)
        return NULL;
    return PyBool_FromLong(ok && window_update(w, c));
}

static PyObject *
Window_check_and_update(Window *w, PyObject *o)
{
    unsigned long long c;
    int ok = window_counter(o, &c);
    if (ok < 0)
        return NULL;
    return PyBool_FromLong(ok && window_check(w, c) && window_update(w, c));
}

static PyObject *
Window_get_top(Window *w, void *closure)
{
    (void)closure;
    return w->empty ? PyLong_FromLong(-1) : PyLong_FromUnsignedLongLong(w->top);
}

static int
Window_set_top(Window *w, PyObject *v, void *closure)
{
    (void)closure;
    if (v == NULL || !PyLong_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "top is an int");
        return -1;
    }
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && !overflow) {
        if (PyErr_Occurred())
            return -1;
        w->empty = 1;
        w->top = 0;
        return 0;
    }
    unsigned long long t = PyLong_AsUnsignedLongLong(v);
    if (t == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "top is -1 or a counter in 0..2**64-1");
        return -1;
    }
    w->top = t;
    w->empty = 0;
    return 0;
}

static PyObject *
Window_get_blocks(Window *w, void *closure)
{
    (void)closure;
    return PyMemoryView_FromObject((PyObject *)w);
}

static PyObject *
Window_get_int(Window *w, void *closure)
{
    return PyLong_FromSsize_t(*(Py_ssize_t *)((char *)w + (Py_ssize_t)closure));
}

static int
Window_getbuffer(Window *w, Py_buffer *view, int flags)
{
    view->obj = Py_NewRef((PyObject *)w);
    view->buf = w->blocks;
    view->len = w->shape * 8;
    view->readonly = 0;
    view->itemsize = 8;
    view->format = (flags & PyBUF_FORMAT) ? "Q" : NULL;
    view->ndim = 1;
    view->shape = (flags & PyBUF_ND) ? &w->shape : NULL;
    view->strides = (flags & PyBUF_STRIDES) == PyBUF_STRIDES ? &w->stride : NULL;
    view->suboffsets = NULL;
    view->internal = NULL;
    return 0;
}

static PyBufferProcs Window_as_buffer = {(getbufferproc)Window_getbuffer, NULL};

static PyMethodDef Window_methods[] = {
    {"check", (PyCFunction)Window_check, METH_O,
     "check(counter) -> may it be fresh? (before decryption; changes nothing)"},
    {"update", (PyCFunction)Window_update, METH_O,
     "update(counter) -> marked as seen (False: a replay or too old)"},
    {"check_and_update", (PyCFunction)Window_check_and_update, METH_O,
     "check_and_update(counter) -> check, then update"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Window_getset[] = {
    {"top", (getter)Window_get_top, (setter)Window_set_top,
     "the highest counter accepted so far, -1 before the first", NULL},
    {"blocks", (getter)Window_get_blocks, NULL, "the 64-bit blocks (a memoryview)", NULL},
    {"bits", (getter)Window_get_int, NULL, "window size in bits",
     (void *)offsetof(Window, bits)},
    {"size", (getter)Window_get_int, NULL, "usable window (bits - 64)",
     (void *)offsetof(Window, size)},
    {"mask", (getter)Window_get_int, NULL, "blocks - 1", (void *)offsetof(Window, mask)},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WindowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "jumping.core._dataplane.ReplayWindow",
    .tp_basicsize = offsetof(Window, blocks) + sizeof(unsigned long long),
    .tp_itemsize = sizeof(unsigned long long),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ReplayWindow(bits=8192): the anti-replay window (jumping/core/replay.py)",
    .tp_methods = Window_methods,
    .tp_getset = Window_getset,
    .tp_as_buffer = &Window_as_buffer,
    .tp_new = Window_new,
};

/* ------------------------------------------------------------------ SessionBase
 * The numbers a session keeps (jumping/core/session.py), stored as C doubles and 64-bit
 * integers inside the session object: a Python slot holds a pointer to a float or int
 * object of 32 bytes of its own, and an idle gateway session kept about eight of them
 * (issue 18: ~250 B of 2.2 KiB). Reading one makes a float or int as a slot read would
 * return one; writing takes any real number. Session subclasses it where it is built;
 * session.py's pure-Python twin has the same names as slots. */
typedef struct {
    PyObject_HEAD
    double created, last_rx, last_tx, state_since, last_data, stats_at, active_rx, left_rx,
        first_unacked, left_unacked, lost_since, offpath_rx;
    long long rx_bytes, tx_bytes, rx_packets, tx_packets, attach_count;
} SessionBase;

#define SB_D(name, doc) {#name, T_DOUBLE, offsetof(SessionBase, name), 0, doc}
#define SB_L(name, doc) {#name, T_LONGLONG, offsetof(SessionBase, name), 0, doc}

static PyMemberDef SessionBase_members[] = {
    SB_D(created, "when the session was made (s)"),
    SB_D(last_rx, "last authenticated packet on the active path (s)"),
    SB_D(last_tx, "last packet sent (s)"),
    SB_D(state_since, "when the FSM entered its state (s)"),
    SB_D(last_data, "last DATA packet either way (s)"),
    SB_D(stats_at, "when SESSION_STATS was last emitted (s)"),
    SB_D(active_rx, "last packet on the active path (s)"),
    SB_D(left_rx, "last packet on the path left by the last switch (s)"),
    SB_D(first_unacked, "first send not answered since (s), 0.0: none"),
    SB_D(left_unacked, "first_unacked of the path left by the last switch (s)"),
    SB_D(lost_since, "when the active path was judged lost (s), 0.0: not lost"),
    SB_D(offpath_rx, "last authenticated packet from another path (s)"),
    SB_L(rx_bytes, "bytes received"),
    SB_L(tx_bytes, "bytes sent"),
    SB_L(rx_packets, "packets received"),
    SB_L(tx_packets, "packets sent"),
    SB_L(attach_count, "transports attached so far"),
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject SessionBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "jumping.core._dataplane.SessionBase",
    .tp_basicsize = sizeof(SessionBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The numbers of a session, unboxed (jumping/core/session.py subclasses it)",
    .tp_members = SessionBase_members,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_dataplane",
    "The data plane's per-packet loops in C (jumping/core/aead.py is their twin).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__dataplane(void)
{
    PyObject *exc = PyImport_ImportModule("cryptography.exceptions");
    if (exc == NULL)
        return NULL;
    InvalidTag = PyObject_GetAttrString(exc, "InvalidTag");
    Py_DECREF(exc);
    if (InvalidTag == NULL)
        return NULL;
    if (PyType_Ready(&WindowType) < 0 || PyType_Ready(&SessionBaseType) < 0)
        return NULL;
    if (PyType_Ready(&AeadType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&WindowType);
    if (PyModule_AddObject(m, "ReplayWindow", (PyObject *)&WindowType) < 0) {
        Py_DECREF(&WindowType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&SessionBaseType);
    if (PyModule_AddObject(m, "SessionBase", (PyObject *)&SessionBaseType) < 0) {
        Py_DECREF(&SessionBaseType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&AeadType);
    if (PyModule_AddObject(m, "Aead", (PyObject *)&AeadType) < 0) {
        Py_DECREF(&AeadType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
