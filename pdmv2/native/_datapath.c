/*
 * pdmv2.native._datapath: the compiled per-packet path of the PDMv2 agent (issue 9).
 *
 * The Python engine (pdmv2/core/flow.py) is the readable reference; this file does the same work
 * for established flows without one Python object per packet:
 *   - parse the IPv6 extension-header chain once (RFC 8200 placement rules, docs/agent.md),
 *   - reserve room for the option (new Destination Options header, or merge into the existing
 *     one exactly as pdmv2/core/doh.py does), write it, seal/open with OpenSSL EVP
 *     (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305; one preallocated EVP_CIPHER_CTX per key),
 *   - PSNTP/PSNLR/Global Pointer/Kri state, replay bitmaps, epoch-anchored Kri,
 *   - the NFQUEUE loop itself (libnetfilter_queue), verdicts in batches, kernel receive times.
 *
 * Python keeps the control plane: it derives keys (HPKE KDF) and installs them into a bounded
 * table here; when the packet path needs a key it does not have, it queues a request in a small
 * ring and passes the packet unmeasured.  Records go to a lock-free single-producer ring that
 * Python drains; when it is full, records are dropped and counted, the packet path never waits.
 *
 * Threading: the packet loop runs without the GIL and takes `mu` around each burst; every Python
 * method that touches tables takes `mu` too (while holding the GIL; the loop never takes the GIL,
 * so there is no lock-order problem).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <linux/netfilter.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <openssl/evp.h>

/* ------------------------------------------------------------------------------------------ */
/* constants shared with pdmv2/native/__init__.py                                              */

enum { AEAD_AES_128_GCM = 1, AEAD_AES_256_GCM = 2, AEAD_CHACHA20_POLY1305 = 3 };
enum { MODE_OFF = 0, MODE_PDM = 1, MODE_CLEAR = 2, MODE_ENC = 3 };
enum { HOOK_INGRESS = 0, HOOK_EGRESS = 1 };

/* Outcomes: the names are in pdmv2/native/__init__.py (OUTCOMES), same order. */
enum {
    O_INSERTED, O_OFF, O_NOT_MEASURED, O_TOO_BIG, O_REFUSED, O_NO_KEY, O_MALFORMED, O_READ,
    O_NO_PDM, O_AUTH_FAILED, O_REPLAY, O_STALE_KEY, O_BAD_OPTION, O_DOWNGRADE, O_KEY_PENDING,
    O_KRI_WAIT, O_RESERVE_PENDING, O_NOT_READ, O_RATE_LIMITED, O_COUNT
};

enum { REQ_KEY = 1, REQ_RESERVE = 2, REQ_RX_EPOCH = 3 };

#define OPT_PDM 0x0F
#define LEN_PDM 10
#define LEN_CLEAR 0x12
#define LEN_ENC 0x22
#define PRSEQ_PERIOD 32767u
#define NONE_NS INT64_MIN
#define MAX_PKT (65535 + 64)
#define REC_SIZE 96
#define PROBE_SETS 1024
#define RESERVE_AHEAD 15 /* flow.RESERVE_AHEAD */
#define RESYNC_SPACE 48 /* 3 epochs x 32 rotations / 2 parities */

/* ------------------------------------------------------------------------------------------ */
/* AEAD                                                                                         */

typedef struct {
    EVP_CIPHER_CTX *ctx;
    uint8_t base[12];
    int seal;
} aead_t;

static const EVP_CIPHER *aead_cipher(int id) {
    switch (id) {
    case AEAD_AES_128_GCM: return EVP_aes_128_gcm();
    case AEAD_AES_256_GCM: return EVP_aes_256_gcm();
    case AEAD_CHACHA20_POLY1305: return EVP_chacha20_poly1305();
    default: return NULL;
    }
}

static int aead_keylen(int id) { return id == AEAD_AES_128_GCM ? 16 : 32; }

static void aead_free(aead_t *a) {
    if (a->ctx) EVP_CIPHER_CTX_free(a->ctx);
    a->ctx = NULL;
}

/* 0 on success */
static int aead_init(aead_t *a, int id, const uint8_t *key, const uint8_t *base, int seal) {
    const EVP_CIPHER *c = aead_cipher(id);
    if (!c) return -1;
    a->ctx = EVP_CIPHER_CTX_new();
    if (!a->ctx) return -1;
    a->seal = seal;
    memcpy(a->base, base, 12);
    if (EVP_CipherInit_ex(a->ctx, c, NULL, NULL, NULL, seal) != 1 ||
        EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_AEAD_SET_IVLEN, 12, NULL) != 1 ||
        EVP_CipherInit_ex(a->ctx, NULL, NULL, key, NULL, seal) != 1) {
        aead_free(a);
        return -1;
    }
    return 0;
}

static inline void aead_nonce(const aead_t *a, uint16_t rn, uint8_t nonce[12]) {
    memcpy(nonce, a->base, 12);
    nonce[10] ^= (uint8_t)(rn >> 8);
    nonce[11] ^= (uint8_t)rn;
}

/* hdr: 6 octets (AAD); plain: 14; out: 30 (ciphertext || tag) */
static int aead_seal(aead_t *a, const uint8_t *hdr, uint16_t rn, const uint8_t *plain, uint8_t *out) {
    uint8_t nonce[12];
    int len = 0;
    aead_nonce(a, rn, nonce);
    if (EVP_EncryptInit_ex(a->ctx, NULL, NULL, NULL, nonce) != 1) return -1;
    if (EVP_EncryptUpdate(a->ctx, NULL, &len, hdr, 6) != 1) return -1;
    if (EVP_EncryptUpdate(a->ctx, out, &len, plain, 14) != 1) return -1;
    if (EVP_EncryptFinal_ex(a->ctx, out + len, &len) != 1) return -1;
    if (EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_AEAD_GET_TAG, 16, out + 14) != 1) return -1;
    return 0;
}

/* 0: opened; -1: tag failed */
static int aead_open(aead_t *a, const uint8_t *hdr, uint16_t rn, const uint8_t *sealed, uint8_t *plain) {
    uint8_t nonce[12], tag[16];
    int len = 0;
    aead_nonce(a, rn, nonce);
    memcpy(tag, sealed + 14, 16);
    if (EVP_DecryptInit_ex(a->ctx, NULL, NULL, NULL, nonce) != 1) return -1;
    if (EVP_DecryptUpdate(a->ctx, NULL, &len, hdr, 6) != 1) return -1;
    if (EVP_DecryptUpdate(a->ctx, plain, &len, sealed, 14) != 1) return -1;
    if (EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_AEAD_SET_TAG, 16, tag) != 1) return -1;
    if (EVP_DecryptFinal_ex(a->ctx, plain + len, &len) != 1) return -1;
    return 0;
}

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ------------------------------------------------------------------------------------------ */
/* Python type Cipher: one key, for tests and the micro-benchmark                              */

typedef struct {
    PyObject_HEAD
    aead_t seal, open;
} CipherObject;

static int Cipher_init(CipherObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"aead", "key", "base_nonce", NULL};
    int id;
    Py_buffer key, base;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iy*y*", kwlist, &id, &key, &base)) return -1;
    int rc = -1;
    if (!aead_cipher(id)) {
        PyErr_Format(PyExc_ValueError, "unknown AEAD id %d", id);
    } else if (key.len != aead_keylen(id) || base.len != 12) {
        PyErr_SetString(PyExc_ValueError, "key or base nonce of the wrong length");
    } else {
        aead_free(&self->seal);
        aead_free(&self->open);
        if (aead_init(&self->seal, id, key.buf, base.buf, 1) || aead_init(&self->open, id, key.buf, base.buf, 0))
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused the key");
        else
            rc = 0;
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&base);
    return rc;
}

static void Cipher_dealloc(CipherObject *self) {
    aead_free(&self->seal);
    aead_free(&self->open);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Cipher_seal(CipherObject *self, PyObject *args) {
    Py_buffer hdr, plain;
    int rn;
    if (!PyArg_ParseTuple(args, "y*iy*", &hdr, &rn, &plain)) return NULL;
    PyObject *res = NULL;
    uint8_t out[36];
    if (hdr.len != 6 || plain.len != 14 || rn < 0 || rn > 0x7FFF) {
        PyErr_SetString(PyExc_ValueError, "need a 6-octet header, a 15-bit random number and 14 octets");
    } else if (aead_seal(&self->seal, hdr.buf, (uint16_t)rn, plain.buf, out + 6) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "seal failed");
    } else {
        memcpy(out, hdr.buf, 6);
        res = PyBytes_FromStringAndSize((char *)out, 36);
    }
    PyBuffer_Release(&hdr);
    PyBuffer_Release(&plain);
    return res;
}

static PyObject *Cipher_open(CipherObject *self, PyObject *args) {
    Py_buffer hdr, sealed;
    int rn;
    if (!PyArg_ParseTuple(args, "y*iy*", &hdr, &rn, &sealed)) return NULL;
    PyObject *res = NULL;
    uint8_t plain[14];
    if (hdr.len != 6 || sealed.len != 30 || rn < 0 || rn > 0x7FFF) {
        PyErr_SetString(PyExc_ValueError, "need a 6-octet header, a 15-bit random number and 30 octets");
    } else if (aead_open(&self->open, hdr.buf, (uint16_t)rn, sealed.buf, plain) != 0) {
        Py_INCREF(Py_None);
        res = Py_None; /* the wrapper turns None into AuthenticationError */
    } else {
        res = PyBytes_FromStringAndSize((char *)plain, 14);
    }
    PyBuffer_Release(&hdr);
    PyBuffer_Release(&sealed);
    return res;
}

/* bench(n) -> (seal_ns_per_op, open_ns_per_op), measured in C without Python in the loop. */
static PyObject *Cipher_bench(CipherObject *self, PyObject *args) {
    long n;
    if (!PyArg_ParseTuple(args, "l", &n)) return NULL;
    if (n <= 0) {
        PyErr_SetString(PyExc_ValueError, "n must be positive");
        return NULL;
    }
    uint8_t hdr[6] = {OPT_PDM, LEN_ENC, 0x20, 0, 0, 2}, plain[14] = {0}, out[30], back[14];
    int64_t t0, t1, t2;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    t0 = mono_ns();
    for (long i = 0; i < n; i++) {
        plain[13] = (uint8_t)i;
        bad |= aead_seal(&self->seal, hdr, (uint16_t)(i & 0x7FFF), plain, out);
    }
    t1 = mono_ns();
    for (long i = 0; i < n; i++) bad |= aead_open(&self->open, hdr, (uint16_t)(n - 1) & 0x7FFF, out, back);
    t2 = mono_ns();
    Py_END_ALLOW_THREADS
    if (bad) {
        PyErr_SetString(PyExc_RuntimeError, "seal/open failed during the benchmark");
        return NULL;
    }
    return Py_BuildValue("(dd)", (double)(t1 - t0) / n, (double)(t2 - t1) / n);
}

static PyMethodDef Cipher_methods[] = {
    {"seal", (PyCFunction)Cipher_seal, METH_VARARGS, "seal(header6, random_number, plain14) -> 36-octet option"},
    {"open", (PyCFunction)Cipher_open, METH_VARARGS, "open(header6, random_number, sealed30) -> 14 octets or None"},
    {"bench", (PyCFunction)Cipher_bench, METH_VARARGS, "bench(n) -> (seal ns/op, open ns/op)"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject CipherType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pdmv2.native._datapath.Cipher",
    .tp_basicsize = sizeof(CipherObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One AEAD key of the option: Cipher(aead_id, key, base_nonce).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Cipher_init,
    .tp_dealloc = (destructor)Cipher_dealloc,
    .tp_methods = Cipher_methods,
};

/* ------------------------------------------------------------------------------------------ */
/* tables                                                                                       */

typedef struct { uint8_t b[40]; } tkey_t; /* src16 sport2 dst16 dport2 proto1, zero padded */

static inline void tkey_make(tkey_t *k, const uint8_t *src, uint16_t sport, const uint8_t *dst, uint16_t dport,
                             uint8_t proto) {
    memset(k, 0, sizeof *k);
    memcpy(k->b, src, 16);
    k->b[16] = sport >> 8; k->b[17] = (uint8_t)sport;
    memcpy(k->b + 18, dst, 16);
    k->b[34] = dport >> 8; k->b[35] = (uint8_t)dport;
    k->b[36] = proto;
}

static inline void tkey_reverse(const tkey_t *k, tkey_t *r) {
    memset(r, 0, sizeof *r);
    memcpy(r->b, k->b + 18, 18);
    memcpy(r->b + 18, k->b, 18);
    r->b[36] = k->b[36];
}

static uint64_t g_hash_key[2];

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}

static inline uint64_t tkey_hash(const tkey_t *k, uint64_t extra) {
    uint64_t h = g_hash_key[0] ^ extra * 0x9E3779B97F4A7C15ULL, w[5];
    memcpy(w, k->b, 40);
    for (int i = 0; i < 5; i++) h = mix64(h ^ w[i]) + g_hash_key[1];
    return h;
}

typedef struct {
    tkey_t key; /* local orientation: src = this host */
    uint32_t hnext, prev, next; /* 1-based indices, 0 = none */
    uint8_t used, own_valid, other_valid, prev_valid;
    int64_t last_recv, sent_before_recv, last_send, last_seen, other_rotated;
    uint16_t next_psntp, psnlr, pr_state, pr_used, pr_limit;
    uint64_t own_kri, other_kri, other_prev_kri, sent, received;
    uint64_t seen_kri[2];
    uint8_t seen_valid[2];
    uint64_t *seen[2]; /* 32768-bit bitmaps, allocated on first receive */
    uint32_t cursor;
} flow_t;

typedef struct {
    tkey_t key; /* wire orientation: src = sender */
    uint64_t kri;
    uint8_t used, seal;
    uint32_t stamp;
    int64_t limited_until; /* no key yet: the peer's derivation budget is used up until then */
    aead_t aead;
} keyent_t;

#define KEY_WAYS 4

typedef struct { uint8_t kind, seal, pad[6]; uint64_t kri; tkey_t key; } req_t;
#define REQ_RING 256

/* A packet held while Python derives its key (or makes a reservation durable): at most HELD_MAX,
 * for at most the hold time Python gives; then it goes out unmeasured. */
#define HELD_MAX 64
typedef struct {
    uint32_t id;
    int hook, len;
    int64_t t, held_at;
    uint8_t *buf;
} held_t;

typedef struct {
    struct DatapathObject *d;
    struct nfq_q_handle *qh;
    uint32_t pending_id;  /* highest id waiting for a batch accept, 0 none */
    int pending;
    int64_t wall_to_mono; /* monotonic = realtime - wall_offset */
} loopctx_t;

typedef struct DatapathObject {
    PyObject_HEAD
    pthread_mutex_t mu;
    /* config */
    int rotate_after, max_tries, mtu, drop_on_auth_failure, aead_id;
    int64_t grace_ns, idle_ns, epoch_ns, wall_offset_ns, prefetch_ns;
    /* policy: longest prefix first */
    int nrules, default_mode;
    uint8_t (*rule_net)[16];
    int *rule_len, *rule_mode;
    /* epoch state */
    uint64_t A;
    int64_t send_floor, recv_floor, reserved; /* -1: none, as in the Python engine */
    int64_t rx_recorded; /* newest key epoch received that is durable (PdmEngine._rx_recorded) */
    /* resync cursors of flows with no state: 4-way sets, least recently used way replaced */
    struct { tkey_t key; uint32_t cursor, stamp; uint8_t used; } probes[PROBE_SETS * 4];
    uint32_t probe_stamp;
    uint32_t gp[2];
    /* random pool (u32 draws; Python refills, getrandom() when empty) */
    uint32_t *pool;
    uint32_t pool_cap, pool_head, pool_count;
    /* flows */
    uint32_t max_flows, nflows, nbuckets, lru_head, lru_tail, free_head, next_unused;
    flow_t *flows;
    uint32_t *buckets;
    /* keys */
    uint32_t key_sets, key_stamp;
    keyent_t *keys;
    /* requests */
    req_t reqs[REQ_RING];
    uint32_t req_head, req_count;
    int notify_fd;
    /* records: single producer (packet path), single consumer (Python), lock-free */
    uint8_t *ring;
    uint32_t ring_cap; /* power of two, in records */
    uint64_t ring_w, ring_r;
    uint64_t rec_dropped, rec_on, rec_sampled;
    uint32_t rec_stride, rec_epoch; /* sampling: keep flows whose hash is 0 mod stride; epoch: gaps */
    int64_t rec_stride_t;           /* when the stride last changed */
    int rec_losing;                 /* the ring was full at the last record */
    /* counters */
    uint64_t c_in[O_COUNT], c_out[O_COUNT];
    uint64_t c_handled, c_busy_ns, c_key_requests, c_req_dropped, c_not_read, c_batches, c_kernel_ts;
    /* scratch */
    uint8_t out[MAX_PKT];
    int out_len;
    int64_t last_egress_flow; /* index+1 of the flow of the last egress with an option */
    /* Transmit compensation (set by Python from its calibration; 0: none): the time from the clock
     * read before sealing to the packet reaching the device, added to that read.  [0] warm, [1]
     * cold: the packet came more than 1 ms after the one before it. */
    int64_t tx_comp_ns[2];
    int64_t last_pkt_t;
    int tx_cold;
    uint32_t cur_comp, rec_rnf;
    struct nfq_handle *nfq_h;
    loopctx_t loop;
    held_t held[HELD_MAX];
    int nheld;
    uint64_t c_held, c_held_expired;
} DatapathObject;

/* ------------------------------------------------------------------------------------------ */
/* random draws: same mapping as the Python side (lo + u32 % (hi - lo))                         */

static uint32_t draw(DatapathObject *d, uint32_t lo, uint32_t hi) {
    uint32_t v;
    if (d->pool_count) {
        v = d->pool[d->pool_head];
        d->pool_head = (d->pool_head + 1) % d->pool_cap;
        d->pool_count--;
    } else if (getrandom(&v, sizeof v, GRND_NONBLOCK) != (ssize_t)sizeof v) {
        v = (uint32_t)mix64((uint64_t)mono_ns());
    }
    return lo + v % (hi - lo);
}

/* ------------------------------------------------------------------------------------------ */
/* flow table (LRU list, chained hash)                                                          */

static flow_t *F(DatapathObject *d, uint32_t i) { return &d->flows[i - 1]; }

static uint32_t flow_find(DatapathObject *d, const tkey_t *k) {
    uint32_t i = d->buckets[tkey_hash(k, 0) & (d->nbuckets - 1)];
    while (i && memcmp(F(d, i)->key.b, k->b, 40) != 0) i = F(d, i)->hnext;
    return i;
}

static void lru_unlink(DatapathObject *d, uint32_t i) {
    flow_t *f = F(d, i);
    if (f->prev) F(d, f->prev)->next = f->next; else d->lru_head = f->next;
    if (f->next) F(d, f->next)->prev = f->prev; else d->lru_tail = f->prev;
    f->prev = f->next = 0;
}

static void lru_push(DatapathObject *d, uint32_t i) {
    flow_t *f = F(d, i);
    f->prev = d->lru_tail;
    f->next = 0;
    if (d->lru_tail) F(d, d->lru_tail)->next = i; else d->lru_head = i;
    d->lru_tail = i;
}

static void lru_touch(DatapathObject *d, uint32_t i) {
    if (d->lru_tail != i) {
        lru_unlink(d, i);
        lru_push(d, i);
    }
}

static void flow_forget(DatapathObject *d, uint32_t i) {
    flow_t *f = F(d, i);
    /* design: the floors outlive the flow, so its (key, nonce) pairs and replays stay refused */
    if (f->own_valid && (int64_t)f->own_kri > d->send_floor) d->send_floor = (int64_t)f->own_kri;
    if (f->other_valid && (int64_t)f->other_kri > d->recv_floor) d->recv_floor = (int64_t)f->other_kri;
    uint32_t *pp = &d->buckets[tkey_hash(&f->key, 0) & (d->nbuckets - 1)];
    while (*pp && *pp != i) pp = &F(d, *pp)->hnext;
    if (*pp) *pp = f->hnext;
    lru_unlink(d, i);
    free(f->seen[0]);
    free(f->seen[1]);
    memset(f, 0, sizeof *f);
    f->hnext = d->free_head;
    d->free_head = i;
    d->nflows--;
}

static uint32_t flow_new(DatapathObject *d, const tkey_t *k) {
    uint32_t i;
    if (!d->free_head && d->next_unused < d->max_flows) {
        i = ++d->next_unused; /* slots are taken in order: untouched pages stay unmapped */
    } else {
        if (!d->free_head) flow_forget(d, d->lru_head);
        i = d->free_head;
        d->free_head = F(d, i)->hnext;
    }
    flow_t *f = F(d, i);
    memset(f, 0, sizeof *f);
    f->key = *k;
    f->used = 1;
    f->last_recv = f->sent_before_recv = f->last_send = f->other_rotated = NONE_NS;
    uint32_t b = tkey_hash(k, 0) & (d->nbuckets - 1);
    f->hnext = d->buckets[b];
    d->buckets[b] = i;
    lru_push(d, i);
    d->nflows++;
    return i;
}

/* ------------------------------------------------------------------------------------------ */
/* key table: set-associative, KEY_WAYS per set, least recently used way replaced              */

static keyent_t *key_find(DatapathObject *d, const tkey_t *k, uint64_t kri) {
    keyent_t *set = &d->keys[(tkey_hash(k, kri + 1) % d->key_sets) * KEY_WAYS];
    for (int w = 0; w < KEY_WAYS; w++)
        if (set[w].used && set[w].kri == kri && memcmp(set[w].key.b, k->b, 40) == 0) {
            set[w].stamp = ++d->key_stamp;
            return &set[w];
        }
    return NULL;
}

static int key_install(DatapathObject *d, const tkey_t *k, uint64_t kri, int aead_id, const uint8_t *key,
                       const uint8_t *base, int seal, int64_t limited_until) {
    keyent_t *set = &d->keys[(tkey_hash(k, kri + 1) % d->key_sets) * KEY_WAYS], *victim = NULL;
    for (int w = 0; w < KEY_WAYS; w++)
        if (set[w].used && set[w].kri == kri && memcmp(set[w].key.b, k->b, 40) == 0) victim = &set[w];
    if (!victim)
        for (int w = 0; w < KEY_WAYS; w++)
            if (!victim || !set[w].used || (victim->used && set[w].stamp < victim->stamp)) victim = &set[w];
    aead_t a = {0};
    if (key && aead_init(&a, aead_id, key, base, seal) != 0) return -1; /* key NULL: "no key" entry */
    aead_free(&victim->aead);
    victim->aead = a;
    victim->key = *k;
    victim->kri = kri;
    victim->seal = (uint8_t)seal;
    victim->used = 1;
    victim->limited_until = key ? 0 : limited_until;
    victim->stamp = ++d->key_stamp;
    return 0;
}

static void keys_clear(DatapathObject *d) {
    for (uint32_t i = 0; i < d->key_sets * KEY_WAYS; i++) {
        aead_free(&d->keys[i].aead);
        d->keys[i].used = 0;
    }
}

static void request(DatapathObject *d, int kind, const tkey_t *k, uint64_t kri, int seal) {
    for (uint32_t n = 0; n < d->req_count; n++) { /* the ring is small: no duplicates */
        req_t *r = &d->reqs[(d->req_head + n) % REQ_RING];
        if (r->kind == kind && r->kri == kri && (kind != REQ_KEY || memcmp(r->key.b, k->b, 40) == 0)) return;
    }
    if (d->req_count == REQ_RING) {
        d->c_req_dropped++;
        return;
    }
    req_t *r = &d->reqs[(d->req_head + d->req_count) % REQ_RING];
    r->kind = (uint8_t)kind;
    r->seal = (uint8_t)seal;
    r->kri = kri;
    if (k) r->key = *k; else memset(&r->key, 0, sizeof r->key);
    d->req_count++;
    d->c_key_requests++;
    if (d->notify_fd >= 0) {
        uint64_t one = 1;
        ssize_t rc = write(d->notify_fd, &one, sizeof one);
        (void)rc;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* records                                                                                      */

/* Layout (little-endian, REC_SIZE octets), parsed by pdmv2/native/__init__.py RECORD:
 *  0 t_ns i64 | 8 kri u64 | 16 gp u32 | 20 sport u16 | 22 dport u16 | 24 psntp u16 | 26 psnlr u16
 * 28 delta_tlr u16 | 30 delta_tls u16 | 32 dir u8 | 33 mode u8 | 34 outcome u8 | 35 proto u8
 * 36 scale_dtlr u8 | 37 scale_dtls u8 | 38 has_gp u8 | 39 has_kri u8 | 40 src 16 | 56 dst 16
 * 72 sample_epoch u8 | 73 cold u8 | 74 rnf u16 (egress: RN<<1|F) | 76 comp_ns u32 (added to the
 * clock read) | 80 pad */
typedef struct {
    int64_t t_ns;
    uint64_t kri;
    uint32_t gp;
    uint16_t sport, dport, psntp, psnlr, delta_tlr, delta_tls;
    uint8_t dir, mode, outcome, proto, scale_dtlr, scale_dtls, has_gp, has_kri;
    uint8_t src[16], dst[16];
    uint8_t sample_epoch, cold;
    uint16_t rnf;
    uint32_t comp_ns;
    uint8_t pad[REC_SIZE - 80];
} rec_t;

_Static_assert(sizeof(rec_t) == REC_SIZE, "record layout");

/* A hash of the 5-tuple that is the same in both directions (XOR of the two ends). */
static uint32_t sym_hash(const tkey_t *k) {
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++) h = (h ^ (uint8_t)(k->b[i] ^ k->b[18 + i])) * 16777619u;
    h = (h ^ (uint8_t)(k->b[16] ^ k->b[34])) * 16777619u;
    h = (h ^ (uint8_t)(k->b[17] ^ k->b[35])) * 16777619u;
    h = (h ^ k->b[36]) * 16777619u;
    return h ^ (h >> 16);
}

/* The slot for the next record, or NULL when it is not kept.  When Python falls behind, records
 * are sampled by flow rather than lost in a block: with the ring half full only flows whose hash
 * is even are kept, a quarter free 1 in 4, and so on; the others are counted (rec_sampled).  A
 * kept flow keeps all its records, so its request/reply pairs stay whole (the kept sets are
 * nested: a flow kept at stride 4 was kept at 2).  The stride goes up at once and down one step
 * a second while the ring is nearly empty; each step down (and each run of records lost to a
 * full ring) moves sample_epoch, which tells the reader that pairs may span a gap. */
static rec_t *rec_slot(DatapathObject *d, const tkey_t *k, int64_t t) {
    if (!d->rec_on) return NULL;
    uint64_t r = __atomic_load_n(&d->ring_r, __ATOMIC_ACQUIRE);
    uint64_t fill = d->ring_w - r;
    if (fill >= d->ring_cap) {
        d->rec_dropped++;
        if (!d->rec_losing) d->rec_epoch++;
        d->rec_losing = 1;
        return NULL;
    }
    d->rec_losing = 0;
    uint32_t want = 1;
    for (uint64_t lim = d->ring_cap / 2; lim && d->ring_cap - fill <= lim; lim >>= 1) want <<= 1;
    if (want > d->rec_stride) { /* the flows still kept were kept before: no gap in them */
        d->rec_stride = want;
        d->rec_stride_t = t;
    } else if (d->rec_stride > 1 && fill * 8 <= d->ring_cap && t - d->rec_stride_t >= 1000000000LL) {
        d->rec_stride >>= 1; /* one step a second: the flows that come back have a gap behind them */
        d->rec_stride_t = t;
        d->rec_epoch++;
    }
    if (d->rec_stride > 1 && k && (sym_hash(k) & (d->rec_stride - 1)) != 0) {
        d->rec_sampled++;
        return NULL;
    }
    rec_t *slot = (rec_t *)(d->ring + (d->ring_w & (d->ring_cap - 1)) * REC_SIZE);
    return slot;
}

static void rec_commit(DatapathObject *d) { __atomic_store_n(&d->ring_w, d->ring_w + 1, __ATOMIC_RELEASE); }

/* ------------------------------------------------------------------------------------------ */
/* parsing (RFC 8200 placement; mirrors pdmv2/core/doh.py)                                      */

typedef struct {
    int ok;              /* 0: malformed */
    const char *refuse;  /* why no option can be inserted, or NULL */
    uint8_t proto;
    int upper_off;
    int icmp_type;       /* -1 when not ICMPv6 */
    uint16_t sport, dport;
    int dest_off;        /* Destination Options header that may be merged into (egress), -1 */
    int pdm_off;         /* the PDM option in the final destination's header (ingress), -1 */
    int pdm_len;         /* its whole length */
    int any_pdm;         /* a PDM option anywhere (egress: "already has PDM") */
    int not_read;        /* a PDM option this node must not read (RFC 8200 placement, discard) */
} pinfo_t;

/* Options header at p (len octets, bounds checked by the caller): 0 ok, -1 malformed
 * (doh.parse_dest_opts).  *discard: the receiving kernel drops the packet (doh.kernel_discards:
 * more than 7 padding octets in a row, non-zero PadN, unknown option whose action is not 00,
 * more than 8 options). */
static int scan_opts(const uint8_t *p, int len, int *pdm_at, int *pdm_len, int *discard) {
    int pos = 2, pad_run = 0, count = 0;
    *pdm_at = -1;
    *discard = 0;
    while (pos < len) {
        uint8_t t = p[pos];
        if (t == 0) {
            pos++;
            if (++pad_run > 7) *discard = 1;
            continue;
        }
        if (pos + 2 > len) return -1;
        int end = pos + 2 + p[pos + 1];
        if (end > len) return -1;
        if (t == 1) {
            pad_run += end - pos;
            for (int i = pos + 2; i < end; i++)
                if (p[i]) *discard = 1;
        } else {
            pad_run = 0;
            count++;
            if (t == OPT_PDM) {
                if (*pdm_at < 0) {
                    *pdm_at = pos;
                    *pdm_len = end - pos;
                }
            } else if (t >> 6) {
                *discard = 1;
            }
        }
        if (pad_run > 7) *discard = 1;
        pos = end;
    }
    if (count > 8) *discard = 1;
    return 0;
}

/* doh.parse_packet: the first PDM option of the chain, and whether RFC 8200 gives it to this node. */
static void parse(const uint8_t *pkt, int n, pinfo_t *pi) {
    memset(pi, 0, sizeof *pi);
    pi->icmp_type = -1;
    pi->dest_off = pi->pdm_off = -1;
    if (n < 40 || pkt[0] >> 4 != 6) return;
    int payload = (pkt[4] << 8) | pkt[5];
    if (payload == 0 && n > 40) pi->refuse = "jumbogram";
    else if (40 + payload != n) return;
    uint8_t nh = pkt[6];
    int pos = 40, first = 1, upper = 1, frag = 0;
    for (;;) {
        if (nh == 0 || nh == 60 || nh == 43) {
            if (nh == 0 && !first) return;
            if (pos + 2 > n) return;
            int len = (pkt[pos + 1] + 1) * 8;
            if (pos + len > n) return;
            if (nh == 43) {
                if (!pi->refuse) pi->refuse = "routing header";
                pi->dest_off = -1;
                if (pi->pdm_off >= 0) pi->not_read = 1; /* meant for the intermediate destinations */
            } else {
                int at, alen = 0, discard;
                if (scan_opts(pkt + pos, len, &at, &alen, &discard) != 0) return;
                if (nh == 60) pi->dest_off = pos;
                if (discard) pi->not_read = 1;
                if (at >= 0 && pi->pdm_off < 0) {
                    pi->pdm_off = pos + at;
                    pi->pdm_len = alen;
                }
            }
            nh = pkt[pos];
            pos += len;
            first = 0;
            continue;
        }
        if (nh == 44) {
            if (!pi->refuse) pi->refuse = "fragment";
            frag = 1;
            if (pos + 8 > n) return;
            if ((((pkt[pos + 2] << 8) | pkt[pos + 3]) >> 3) == 0) { /* first fragment: the upper layer follows */
                nh = pkt[pos];
                pos += 8;
                break;
            }
            if (pi->pdm_off >= 0) pi->not_read = 1; /* read once per datagram */
            upper = 0;
            break;
        }
        if (nh == 50 || nh == 51) {
            if (!pi->refuse) pi->refuse = "ipsec";
            upper = 0;
        }
        break;
    }
    pi->any_pdm = pi->pdm_off >= 0;
    pi->proto = nh;
    pi->upper_off = pos;
    int ports_ok = upper && (!pi->refuse || (frag && strcmp(pi->refuse, "fragment") == 0));
    if ((nh == 6 || nh == 17) && ports_ok) {
        if (pos + 4 > n) return;
        pi->sport = (pkt[pos] << 8) | pkt[pos + 1];
        pi->dport = (pkt[pos + 2] << 8) | pkt[pos + 3];
    } else if (nh == 58 && ports_ok) {
        if (pos + 1 > n) return;
        pi->icmp_type = pkt[pos];
    }
    pi->ok = 1;
}

/* Grow the packet by an option of `size` octets into d->out (doh.reserve_option):
 * returns the option's offset, -1 no room (too big), -2 refused. */
static int reserve(DatapathObject *d, const uint8_t *pkt, int n, const pinfo_t *pi, int size) {
    if (pi->refuse || pi->any_pdm) return -2;
    uint8_t *o = d->out;
    int nh_off = 6, pos = 40, off, added;
    if (pkt[6] == 0) {
        nh_off = 40;
        pos = 40 + (pkt[41] + 1) * 8;
    }
    if (pkt[nh_off] == 60 && pi->dest_off == pos) {
        /* merge: keep the existing options where they are, drop trailing padding */
        int len = (pkt[pos + 1] + 1) * 8, end = 2, p = 2;
        while (p < len) {
            if (pkt[p + pos] == 0) { p++; continue; }
            int e = p + 2 + pkt[pos + p + 1];
            if (pkt[pos + p] != 1) end = e;
            p = e;
        }
        int body = end - 2;
        int pad1 = end & 1;          /* _pad_to(end, 2) */
        off = pos + 2 + body + pad1;
        int blen = body + pad1 + size;
        int pad2 = (-(2 + blen)) & 7; /* _pad_to(2 + len(body), 8) */
        int hlen = 2 + blen + pad2;
        if (n - len + hlen > MAX_PKT) return -1;
        memcpy(o, pkt, pos + end);
        uint8_t *q = o + pos + end;
        if (pad1) *q++ = 0;
        q[0] = OPT_PDM;
        q[1] = (uint8_t)(size - 2);
        memset(q + 2, 0, size - 2);
        q += size;
        if (pad2 == 1) *q++ = 0;
        else if (pad2 > 1) { q[0] = 1; q[1] = (uint8_t)(pad2 - 2); memset(q + 2, 0, pad2 - 2); q += pad2; }
        o[pos + 1] = (uint8_t)(hlen / 8 - 1);
        memcpy(q, pkt + pos + len, n - pos - len);
        added = hlen - len;
    } else {
        int blen = size;
        int pad2 = (-(2 + blen)) & 7;
        int hlen = 2 + blen + pad2;
        if (n + hlen > MAX_PKT) return -1;
        memcpy(o, pkt, pos);
        o[nh_off] = 60;
        uint8_t *q = o + pos;
        q[0] = pkt[nh_off];
        q[1] = (uint8_t)(hlen / 8 - 1);
        q += 2;
        q[0] = OPT_PDM;
        q[1] = (uint8_t)(size - 2);
        memset(q + 2, 0, size - 2);
        q += size;
        if (pad2 == 1) *q++ = 0;
        else if (pad2 > 1) { q[0] = 1; q[1] = (uint8_t)(pad2 - 2); memset(q + 2, 0, pad2 - 2); q += pad2; }
        memcpy(q, pkt + pos, n - pos);
        off = pos + 2;
        added = hlen;
    }
    int payload = n - 40 + added;
    if (payload > 0xFFFF || n + added > d->mtu) return -1;
    o[4] = (uint8_t)(payload >> 8);
    o[5] = (uint8_t)payload;
    d->out_len = n + added;
    return off;
}

/* ------------------------------------------------------------------------------------------ */
/* protocol                                                                                     */

static int mode_for(DatapathObject *d, const uint8_t *addr) {
    for (int r = 0; r < d->nrules; r++) {
        int bits = d->rule_len[r], i = 0;
        for (; bits >= 8; bits -= 8, i++)
            if (addr[i] != d->rule_net[r][i]) goto next;
        if (bits && ((addr[i] ^ d->rule_net[r][i]) & (0xFF00 >> bits) & 0xFF)) goto next;
        return d->rule_mode[r];
    next:;
    }
    return d->default_mode;
}

#define KRI(e, r) (((uint64_t)(e) << 16) | (uint64_t)(r))

static inline uint64_t epoch_of(DatapathObject *d, int64_t now) {
    int64_t w = now + d->wall_offset_ns;
    return w <= 0 ? 0 : (uint64_t)(w / d->epoch_ns);
}

static inline void advance_epoch(DatapathObject *d, int64_t now) {
    uint64_t e = epoch_of(d, now);
    if (e > d->A) d->A = e;
}

static inline uint16_t prseq_next(flow_t *f) {
    uint16_t v = f->pr_state, bit = (v ^ (v >> 1)) & 1;
    f->pr_state = (uint16_t)((v >> 1) | (bit << 14));
    f->pr_used++;
    return v;
}

/* RFC 8250 §3.2: 16 significant bits of a delta in attoseconds and the shift */
static void encode_delta(uint64_t ns, uint16_t *delta, uint8_t *scale) {
    /* ns * 1e9 as a 128-bit value */
    unsigned __int128 as = (unsigned __int128)ns * 1000000000ULL;
    int bits = 0;
    unsigned __int128 t = as;
    while (t) { bits++; t >>= 1; }
    int s = bits > 16 ? bits - 16 : 0;
    *scale = (uint8_t)s;
    *delta = (uint16_t)(as >> s);
}

static void write_be16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static void write_be32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = (uint8_t)v; }
static uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static uint32_t be32(const uint8_t *p) { return ((uint32_t)p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]; }

static void record(DatapathObject *d, int dir, int mode, int outcome, const tkey_t *wire, int64_t t, const uint8_t *fields,
                   int has_gp, uint64_t kri, int has_kri) {
    rec_t *r = rec_slot(d, wire, t);
    if (!r) return;
    memset(r, 0, sizeof *r);
    r->sample_epoch = (uint8_t)d->rec_epoch;
    if (dir == HOOK_EGRESS) {
        r->cold = (uint8_t)d->tx_cold;
        r->rnf = (uint16_t)d->rec_rnf;
        r->comp_ns = d->cur_comp;
    }
    r->t_ns = t;
    r->dir = (uint8_t)dir;
    r->mode = (uint8_t)mode;
    r->outcome = (uint8_t)outcome;
    if (wire) {
        memcpy(r->src, wire->b, 16);
        r->sport = be16(wire->b + 16);
        memcpy(r->dst, wire->b + 18, 16);
        r->dport = be16(wire->b + 34);
        r->proto = wire->b[36];
    }
    if (fields) { /* scale_dtlr scale_dtls gp(4) psntp psnlr dtlr dtls: the PDMv2 field layout */
        r->scale_dtlr = fields[0];
        r->scale_dtls = fields[1];
        r->gp = be32(fields + 2);
        r->psntp = be16(fields + 6);
        r->psnlr = be16(fields + 8);
        r->delta_tlr = be16(fields + 10);
        r->delta_tls = be16(fields + 12);
    }
    r->has_gp = (uint8_t)has_gp;
    r->kri = kri;
    r->has_kri = (uint8_t)has_kri;
    rec_commit(d);
}

/* Prefetch (agent only; off in the differential tests, where it would change when Python is
 * asked): keys and durable state a flow will need soon are asked for before a packet must wait
 * for them -- the next rotation's key from half-way through a PRSEQ, the next key epoch's key,
 * reservation and receive epoch from prefetch_ns before the epoch changes. */
static void prefetch_key(DatapathObject *d, const tkey_t *k, uint64_t kri, int seal) {
    keyent_t *ke = key_find(d, k, kri);
    if (!ke) request(d, REQ_KEY, k, kri, seal);
}

static void prefetch_send(DatapathObject *d, flow_t *f, const tkey_t *k, int64_t now) {
    if (f->pr_used == f->pr_limit / 2 + 1 && (f->own_kri & 0xFFFF) != 0xFFFF) prefetch_key(d, k, f->own_kri + 1, 1);
    uint64_t next = epoch_of(d, now + d->prefetch_ns);
    if (next > d->A) {
        uint64_t first = KRI(next, 0);
        if ((int64_t)first <= d->send_floor) first = (uint64_t)d->send_floor + 1;
        if ((first >> 16) == next) {
            prefetch_key(d, k, first, 1);
            if ((int64_t)first > d->reserved) request(d, REQ_RESERVE, NULL, first | RESERVE_AHEAD, 1);
        }
    }
}

static void prefetch_recv(DatapathObject *d, flow_t *f, const tkey_t *wire, int64_t now) {
    uint64_t cur = f->other_kri;
    if ((cur & 0xFFFF) != 0xFFFF) prefetch_key(d, wire, cur + 1, 0);
    uint64_t next = epoch_of(d, now + d->prefetch_ns);
    if (next > d->A && next > (cur >> 16)) {
        prefetch_key(d, wire, KRI(next, 0), 0);
        if ((int64_t)next > d->rx_recorded) request(d, REQ_RX_EPOCH, NULL, next, 0);
    }
}

/* One more packet sent from pkt's source-address type (PdmEngine.count_sent): the Global Pointer
 * counts every IPv6 packet the host sends, with PDMv2 or without it (draft section 6.2). */
static void gp_count(DatapathObject *d, const uint8_t *pkt, int n) {
    if (n < 40 || (pkt[0] >> 4) != 6) return;
    int kind = (pkt[8] == 0xFE && (pkt[9] & 0xC0) == 0x80) ? 0 : 1;
    d->gp[kind] = d->gp[kind] % 0xFFFFFFFFu + 1;
}

static int egress_core(DatapathObject *d, const uint8_t *pkt, int n, int64_t now, int *changed);

static int pending(int out) { return out == O_KEY_PENDING || out == O_RESERVE_PENDING; }

/* Egress: *out_packet set when the packet changes.  now < 0: read the clock here (as late as
 * possible before sealing).  A packet that leaves bare counts in the Global Pointer here; one
 * still pending counts when it is decided (or given up: sent bare). */
static int egress(DatapathObject *d, const uint8_t *pkt, int n, int64_t now, int *changed) {
    int out = egress_core(d, pkt, n, now, changed);
    if (out != O_INSERTED && !pending(out)) gp_count(d, pkt, n);
    return out;
}

static int egress_core(DatapathObject *d, const uint8_t *pkt, int n, int64_t now, int *changed) {
    pinfo_t pi;
    *changed = 0;
    d->last_egress_flow = 0;
    parse(pkt, n, &pi);
    if (!pi.ok) return O_MALFORMED;
    if (!pi.refuse && (!(pi.proto == 6 || pi.proto == 17 || pi.proto == 58) ||
                       (pi.proto == 58 && pi.icmp_type != 128 && pi.icmp_type != 129)))
        return O_NOT_MEASURED;
    int mode = mode_for(d, pkt + 24);
    if (mode == MODE_OFF) return O_OFF;
    int size = mode == MODE_PDM ? 12 : mode == MODE_CLEAR ? 20 : 36;
    int off = reserve(d, pkt, n, &pi, size);
    if (off == -1) return O_TOO_BIG;
    if (off == -2) return O_REFUSED;

    tkey_t k;
    tkey_make(&k, pkt + 8, pi.sport, pkt + 24, pi.dport, pi.proto);
    d->cur_comp = 0;
    if (now < 0) { /* read here, as late as possible; plus the calibrated time to the device */
        d->cur_comp = (uint32_t)d->tx_comp_ns[d->tx_cold];
        now = mono_ns() + d->cur_comp;
    }
    uint32_t fi = flow_find(d, &k);
    flow_t *f = fi ? F(d, fi) : NULL;

    /* Kri for this packet (v2 only), decided before touching any state */
    uint64_t kri = 0;
    int fresh = 0;
    keyent_t *ke = NULL;
    if (mode != MODE_PDM) { /* PdmEngine._next_own_kri */
        advance_epoch(d, now);
        if (!f || !f->own_valid || (f->own_kri >> 16) < d->A) {
            kri = (uint64_t)d->A << 16;
            if ((int64_t)kri <= d->send_floor) {
                kri = (uint64_t)d->send_floor + 1;
                if ((kri >> 16) != d->A) return O_KRI_WAIT;
            }
            fresh = 1;
        } else if (f->pr_used >= f->pr_limit) {
            kri = f->own_kri + 1;
            if ((kri >> 16) != d->A) return O_KRI_WAIT;
            fresh = 1;
        } else {
            kri = f->own_kri;
        }
        if (fresh && (int64_t)kri > d->reserved) {
            request(d, REQ_RESERVE, NULL, kri | RESERVE_AHEAD, 1); /* aligned blocks of 16 */
            return O_RESERVE_PENDING;
        }
        if (mode == MODE_ENC) {
            ke = key_find(d, &k, kri);
            if (!ke || (ke->limited_until && now >= ke->limited_until)) {
                request(d, REQ_KEY, &k, kri, 1);
                return O_KEY_PENDING;
            }
            if (ke->limited_until) return O_RATE_LIMITED;
            if (!ke->aead.ctx) return O_NO_KEY;
        }
    }
    /* commit */
    if (!f) {
        fi = flow_new(d, &k);
        f = F(d, fi);
        f->next_psntp = (uint16_t)draw(d, 0, 1u << 16);
        f->pr_state = (uint16_t)draw(d, 1, PRSEQ_PERIOD + 1);
        f->pr_limit = (uint16_t)d->rotate_after;
    } else {
        lru_touch(d, fi);
    }
    if (fresh) { /* a new PRSEQ with every new Kri (also right after the one drawn with the state) */
        f->pr_state = (uint16_t)draw(d, 1, PRSEQ_PERIOD + 1);
        f->pr_used = 0;
        f->pr_limit = (uint16_t)d->rotate_after;
        f->own_kri = kri;
        f->own_valid = 1;
    }
    uint64_t dtlr = 0, dtls = 0;
    if (f->last_recv != NONE_NS) {
        dtlr = now > f->last_recv ? (uint64_t)(now - f->last_recv) : 0;
        dtls = (f->sent_before_recv != NONE_NS && f->last_recv > f->sent_before_recv)
                   ? (uint64_t)(f->last_recv - f->sent_before_recv) : 0;
    }
    uint16_t delta_tlr, delta_tls;
    uint8_t s_tlr, s_tls;
    encode_delta(dtlr, &delta_tlr, &s_tlr);
    encode_delta(dtls, &delta_tls, &s_tls);
    uint16_t psntp = f->next_psntp;
    uint8_t *opt = d->out + off;
    uint8_t fields[14];
    int kind = (pkt[8] == 0xFE && (pkt[9] & 0xC0) == 0x80) ? 0 : 1;
    int has_gp = 0;
    if (mode == MODE_PDM) {
        opt[0] = OPT_PDM; opt[1] = LEN_PDM; opt[2] = s_tlr; opt[3] = s_tls;
        write_be16(opt + 4, psntp); write_be16(opt + 6, f->psnlr);
        write_be16(opt + 8, delta_tlr); write_be16(opt + 10, delta_tls);
        fields[0] = s_tlr; fields[1] = s_tls; write_be32(fields + 2, 0);
        write_be16(fields + 6, psntp); write_be16(fields + 8, f->psnlr);
        write_be16(fields + 10, delta_tlr); write_be16(fields + 12, delta_tls);
        gp_count(d, pkt, n); /* RFC 8250 carries no Global Pointer, but the packet is IPv6 sent */
    } else {
        uint32_t gp = d->gp[kind] % 0xFFFFFFFFu + 1;
        uint16_t rn = prseq_next(f);
        uint16_t rnf = (uint16_t)((rn << 1) | (kri & 1));
        d->rec_rnf = rnf;
        fields[0] = s_tlr; fields[1] = s_tls; write_be32(fields + 2, gp);
        write_be16(fields + 6, psntp); write_be16(fields + 8, f->psnlr);
        write_be16(fields + 10, delta_tlr); write_be16(fields + 12, delta_tls);
        opt[0] = OPT_PDM; opt[1] = mode == MODE_ENC ? LEN_ENC : LEN_CLEAR; opt[2] = 0x20; opt[3] = 0;
        write_be16(opt + 4, rnf);
        if (mode == MODE_ENC) {
            if (aead_seal(&ke->aead, opt, rn, fields, opt + 6) != 0) return O_NO_KEY; /* cannot happen */
        } else {
            memcpy(opt + 6, fields, 14);
        }
        d->gp[kind] = gp;
        has_gp = 1;
    }
    f->next_psntp = (uint16_t)(psntp + 1);
    f->last_send = now;
    f->last_seen = now;
    f->sent++;
    d->last_egress_flow = fi;
    if (d->prefetch_ns && mode == MODE_ENC) prefetch_send(d, f, &k, now);
    *changed = 1;
    record(d, HOOK_EGRESS, mode, O_INSERTED, &k, now, fields, has_gp, kri, mode == MODE_ENC);
    d->rec_rnf = 0;
    return O_INSERTED;
}

static int seen_slot(flow_t *f, uint64_t kri) {
    for (int s = 0; s < 2; s++)
        if (f->seen_valid[s] && f->seen_kri[s] == kri && f->seen[s]) return s;
    return -1;
}

static uint32_t *probe_cursor(DatapathObject *d, const tkey_t *local, int create) {
    uint32_t set = (uint32_t)(tkey_hash(local, 0x5052) % PROBE_SETS) * 4, victim = set;
    for (uint32_t w = set; w < set + 4; w++) {
        if (d->probes[w].used && memcmp(d->probes[w].key.b, local->b, 40) == 0) {
            d->probes[w].stamp = ++d->probe_stamp;
            return &d->probes[w].cursor;
        }
        if (!d->probes[w].used || (d->probes[victim].used && d->probes[w].stamp < d->probes[victim].stamp)) victim = w;
    }
    if (!create) return NULL;
    d->probes[victim].key = *local;
    d->probes[victim].cursor = 0;
    d->probes[victim].used = 1;
    d->probes[victim].stamp = ++d->probe_stamp;
    return &d->probes[victim].cursor;
}

static void probe_drop(DatapathObject *d, const tkey_t *local) {
    uint32_t set = (uint32_t)(tkey_hash(local, 0x5052) % PROBE_SETS) * 4;
    for (uint32_t w = set; w < set + 4; w++)
        if (d->probes[w].used && memcmp(d->probes[w].key.b, local->b, 40) == 0) d->probes[w].used = 0;
}

/* PdmEngine._candidates: at most max_tries Kris, best first; moves the resync cursor on. */
static int candidates(DatapathObject *d, flow_t *f, const tkey_t *local, int fb, uint64_t *out, uint32_t *next_cursor) {
    int64_t epoch = (int64_t)d->A;
    int n = 0;
    static const int deltas[3] = {0, -1, 1};
    if (f && f->other_valid) {
        uint64_t cur = f->other_kri;
        if ((int)(cur & 1) == fb) {
            out[n++] = cur;
            out[n++] = cur + 2;
        } else {
            out[n++] = cur + 1;
        }
        if (f->prev_valid && (int)(f->other_prev_kri & 1) == fb) out[n++] = f->other_prev_kri;
        int64_t last = (int64_t)(cur >> 16), es[3] = {last + 1, epoch, epoch + 1};
        for (int i = 0; i < 3; i++) {
            int dup = 0;
            for (int j = 0; j < i; j++) dup |= es[j] == es[i];
            if (!dup && es[i] > last) out[n++] = KRI(es[i], fb);
        }
        /* a sender that restarted within the epoch goes on at the next reservation block */
        uint64_t block = (cur | RESERVE_AHEAD) + 1 + (uint64_t)fb;
        out[n++] = block;
        out[n++] = block + RESERVE_AHEAD + 1;
    } else {
        for (int i = 0; i < 3; i++)
            if (epoch + deltas[i] >= 0) out[n++] = KRI(epoch + deltas[i], fb);
    }
    uint32_t *cp = f ? &f->cursor : probe_cursor(d, local, 0);
    uint32_t cursor = cp ? *cp : 0, steps = 0;
    while (n < d->max_tries && steps < RESYNC_SPACE) {
        uint32_t i = (cursor + steps) % RESYNC_SPACE;
        int64_t e = epoch + deltas[i % 3];
        uint64_t k = KRI(e, (uint64_t)fb + 2 * (i / 3));
        steps++;
        int dup = 0;
        for (int j = 0; j < n; j++) dup |= out[j] == k;
        if (e >= 0 && !dup) out[n++] = k;
    }
    *next_cursor = (cursor + steps) % RESYNC_SPACE;
    return n < d->max_tries ? n : d->max_tries;
}

static void set_cursor(DatapathObject *d, flow_t *f, const tkey_t *local, uint32_t cursor) {
    if (f) f->cursor = cursor;
    else *probe_cursor(d, local, 1) = cursor;
}

/* Ingress.  now: monotonic ns of arrival. */
static int ingress(DatapathObject *d, const uint8_t *pkt, int n, int64_t now, int *drop) {
    pinfo_t pi;
    *drop = 0;
    parse(pkt, n, &pi);
    if (!pi.ok) return O_MALFORMED;
    if (pi.pdm_off < 0) return O_NO_PDM;
    if (pi.not_read) {
        d->c_not_read++;
        return O_NOT_READ;
    }
    const uint8_t *opt = pkt + pi.pdm_off;
    int olen = pi.pdm_len;
    tkey_t wire, local;
    tkey_make(&wire, pkt + 8, pi.sport, pkt + 24, pi.dport, pi.proto);
    tkey_reverse(&wire, &local);
    int mode;
    uint8_t fields[14];
    uint64_t kri = 0;
    uint16_t rn = 0;
    if ((olen == 12 || olen == 20) && mode_for(d, pkt + 8) == MODE_ENC) { /* (other lengths: bad_option) */
        /* downgrade: policy expects this peer to encrypt; never touches state, records or metrics */
        *drop = d->drop_on_auth_failure;
        return O_DOWNGRADE;
    }
    uint32_t fi = flow_find(d, &local);
    flow_t *f = fi ? F(d, fi) : NULL;
    if (olen == 36 && opt[1] == LEN_ENC && opt[2] == 0x20 && opt[3] == 0) {
        mode = MODE_ENC;
        uint16_t rnf = be16(opt + 4);
        rn = rnf >> 1;
        int fb = rnf & 1;
        uint64_t cand[32];
        advance_epoch(d, now);
        uint32_t cursor, *cp0 = f ? &f->cursor : probe_cursor(d, &local, 0), cursor0 = cp0 ? *cp0 : 0;
        int nc = candidates(d, f, &local, fb, cand, &cursor), opened = -1;
        for (int i = 0; i < nc; i++) {
            keyent_t *ke = key_find(d, &wire, cand[i]);
            if (ke && ke->limited_until) {
                if (now < ke->limited_until) return O_RATE_LIMITED; /* unmeasured, cursor unmoved */
                ke = NULL;
            }
            if (!ke) {
                /* the control plane derives it; this packet is held meanwhile (cursor unmoved) */
                for (int j = i; j < nc; j++) {
                    keyent_t *kj = key_find(d, &wire, cand[j]);
                    if (!kj || kj->limited_until) request(d, REQ_KEY, &wire, cand[j], 0);
                }
                return O_KEY_PENDING;
            }
            if (!ke->aead.ctx) {
                set_cursor(d, f, &local, cursor);
                return O_NO_KEY;
            }
            if (aead_open(&ke->aead, opt, rn, opt + 6, fields) == 0) {
                opened = i;
                break;
            }
        }
        set_cursor(d, f, &local, cursor);
        if (opened < 0) {
            *drop = d->drop_on_auth_failure;
            record(d, HOOK_INGRESS, mode, O_AUTH_FAILED, &wire, now, NULL, 0, 0, 0);
            return O_AUTH_FAILED;
        }
        kri = cand[opened];
        int stale = 0; /* PdmEngine._check_fresh */
        if (!f || !f->other_valid) {
            stale = (int64_t)kri <= d->recv_floor;
        } else if (kri < f->other_kri) {
            stale = !f->prev_valid || kri != f->other_prev_kri || f->other_rotated == NONE_NS ||
                    now - f->other_rotated > d->grace_ns;
        }
        if (stale) {
            *drop = d->drop_on_auth_failure;
            record(d, HOOK_INGRESS, mode, O_STALE_KEY, &wire, now, NULL, 0, 0, 0);
            return O_STALE_KEY;
        }
        int s = f ? seen_slot(f, kri) : -1;
        if (s >= 0 && ((f->seen[s][rn >> 6] >> (rn & 63)) & 1)) {
            *drop = d->drop_on_auth_failure;
            record(d, HOOK_INGRESS, mode, O_REPLAY, &wire, now, NULL, 0, 0, 0);
            return O_REPLAY;
        }
        if ((int64_t)(kri >> 16) > d->rx_recorded) {
            /* a restart must not accept this epoch again: Python makes it durable first */
            request(d, REQ_RX_EPOCH, NULL, kri >> 16, 0);
            set_cursor(d, f, &local, cursor0); /* asked again with the answer: same candidates */
            return O_RESERVE_PENDING;
        }
    } else {
        /* RFC 8250 PDM or clear PDMv2 (or malformed: refused as decode_option does) */
        if (olen == 12 && opt[1] == LEN_PDM) {
            mode = MODE_PDM;
            fields[0] = opt[2]; fields[1] = opt[3]; memset(fields + 2, 0, 4);
            memcpy(fields + 6, opt + 4, 8);
        } else if (olen == 20 && opt[1] == LEN_CLEAR && (opt[2] >> 4) == 2 && (be16(opt + 2) & 0xFFF) == 0) {
            mode = MODE_CLEAR;
            memcpy(fields, opt + 6, 14);
        } else {
            return O_BAD_OPTION;
        }
    }
    /* commit */
    if (!f) {
        fi = flow_new(d, &local);
        f = F(d, fi);
        f->next_psntp = (uint16_t)draw(d, 0, 1u << 16);
        f->pr_state = (uint16_t)draw(d, 1, PRSEQ_PERIOD + 1);
        f->pr_limit = (uint16_t)d->rotate_after;
        probe_drop(d, &local);
    } else {
        lru_touch(d, fi);
    }
    if (mode == MODE_ENC) { /* PdmEngine._commit_kri */
        if (!f->other_valid || kri > f->other_kri) {
            if (f->other_valid) f->other_rotated = now;
            f->prev_valid = f->other_valid;
            f->other_prev_kri = f->other_kri;
            f->other_kri = kri;
            f->other_valid = 1;
            for (int s = 0; s < 2; s++)
                if (f->seen_valid[s] && f->seen_kri[s] != kri && !(f->prev_valid && f->seen_kri[s] == f->other_prev_kri))
                    f->seen_valid[s] = 0;
        }
        int s = seen_slot(f, kri);
        if (s < 0) {
            s = f->seen_valid[0] ? 1 : 0;
            if (!f->seen[s]) f->seen[s] = malloc(4096);
            if (f->seen[s]) {
                memset(f->seen[s], 0, 4096);
                f->seen_kri[s] = kri;
                f->seen_valid[s] = 1;
            } else {
                s = -1;
            }
        }
        if (s >= 0) f->seen[s][rn >> 6] |= 1ULL << (rn & 63);
    }
    f->psnlr = be16(fields + 6);
    f->sent_before_recv = f->last_send;
    f->last_recv = now;
    f->last_seen = now;
    f->received++;
    if (d->prefetch_ns && mode == MODE_ENC) prefetch_recv(d, f, &wire, now);
    record(d, HOOK_INGRESS, mode, O_READ, &wire, now, fields, mode != MODE_PDM, kri, mode == MODE_ENC);
    return O_READ;
}

/* ------------------------------------------------------------------------------------------ */
/* Datapath Python type                                                                          */

static void dp_free_tables(DatapathObject *d) {
    if (d->flows) {
        for (uint32_t i = 0; i < d->next_unused; i++) {
            free(d->flows[i].seen[0]);
            free(d->flows[i].seen[1]);
        }
    }
    if (d->keys) keys_clear(d);
    free(d->flows); free(d->buckets); free(d->keys); free(d->ring); free(d->pool);
    free(d->rule_net); free(d->rule_len); free(d->rule_mode);
    d->flows = NULL; d->buckets = NULL; d->keys = NULL; d->ring = NULL; d->pool = NULL;
    d->rule_net = NULL; d->rule_len = NULL; d->rule_mode = NULL;
}

static int Datapath_init(DatapathObject *d, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"max_flows", "key_slots", "ring", NULL};
    unsigned int max_flows = 65536, key_slots = 16384, ring = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|III", kwlist, &max_flows, &key_slots, &ring)) return -1;
    if (max_flows < 1 || max_flows > (1u << 24) || key_slots < KEY_WAYS || ring < 2 || ring > (1u << 24)) {
        PyErr_SetString(PyExc_ValueError, "max_flows, key_slots or ring out of range");
        return -1;
    }
    dp_free_tables(d);
    pthread_mutex_init(&d->mu, NULL);
    d->rotate_after = PRSEQ_PERIOD;
    d->max_tries = 8;
    d->mtu = 1500;
    d->grace_ns = 2000000000LL;
    d->idle_ns = 300000000000LL;
    d->epoch_ns = 8000000000LL;
    d->aead_id = AEAD_AES_128_GCM;
    d->default_mode = MODE_OFF;
    d->send_floor = d->recv_floor = d->reserved = d->rx_recorded = -1;
    d->notify_fd = -1;
    d->rec_on = 1;
    d->rec_stride = 1;
    d->max_flows = max_flows;
    uint32_t nb = 1;
    while (nb < 2 * max_flows) nb <<= 1;
    d->nbuckets = nb;
    d->key_sets = (key_slots + KEY_WAYS - 1) / KEY_WAYS;
    uint32_t rc = 1;
    while (rc < ring) rc <<= 1;
    d->ring_cap = rc;
    d->pool_cap = 4096;
    d->flows = calloc(max_flows, sizeof(flow_t));
    d->buckets = calloc(nb, sizeof(uint32_t));
    d->keys = calloc((size_t)d->key_sets * KEY_WAYS, sizeof(keyent_t));
    d->ring = calloc(rc, REC_SIZE);
    d->pool = calloc(d->pool_cap, sizeof(uint32_t));
    if (!d->flows || !d->buckets || !d->keys || !d->ring || !d->pool) {
        dp_free_tables(d);
        PyErr_NoMemory();
        return -1;
    }
    d->free_head = d->next_unused = d->nflows = d->lru_head = d->lru_tail = 0;
    return 0;
}

static void Datapath_dealloc(DatapathObject *d) {
    if (d->nfq_h) {
        nfq_destroy_queue(d->loop.qh);
        nfq_close(d->nfq_h);
        d->nfq_h = NULL;
    }
    dp_free_tables(d);
    pthread_mutex_destroy(&d->mu);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

#define LOCK(d) do { Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&(d)->mu); Py_END_ALLOW_THREADS } while (0)
#define UNLOCK(d) pthread_mutex_unlock(&(d)->mu)

static PyObject *Datapath_configure(DatapathObject *d, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"rotate_after", "grace_ns", "idle_ns", "epoch_ns", "max_tries", "mtu",
                             "drop_on_auth_failure", "records", "prefetch_ns", "tx_comp_warm_ns",
                             "tx_comp_cold_ns", NULL};
    int rotate_after = d->rotate_after, max_tries = d->max_tries, mtu = d->mtu, drop = d->drop_on_auth_failure;
    int records = (int)d->rec_on;
    long long grace = d->grace_ns, idle = d->idle_ns, epoch = d->epoch_ns, prefetch = d->prefetch_ns;
    long long warm = d->tx_comp_ns[0], cold = d->tx_comp_ns[1];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|iLLLiippLLL", kwlist, &rotate_after, &grace, &idle, &epoch,
                                     &max_tries, &mtu, &drop, &records, &prefetch, &warm, &cold))
        return NULL;
    if (rotate_after < 1 || rotate_after > (int)PRSEQ_PERIOD || epoch <= 0 || max_tries < 1 || max_tries > 16 ||
        mtu < 1280 || mtu > 65535 || grace < 0 || idle <= 0 || prefetch < 0 || warm < 0 || warm > 1000000 ||
        cold < 0 || cold > 1000000) {
        PyErr_SetString(PyExc_ValueError, "configure: a setting is out of range");
        return NULL;
    }
    LOCK(d);
    d->rotate_after = rotate_after; d->grace_ns = grace; d->idle_ns = idle; d->epoch_ns = epoch;
    d->max_tries = max_tries; d->mtu = mtu; d->drop_on_auth_failure = drop; d->rec_on = (uint64_t)records;
    d->prefetch_ns = prefetch;
    d->tx_comp_ns[0] = warm; d->tx_comp_ns[1] = cold;
    UNLOCK(d);
    Py_RETURN_NONE;
}

/* set_policy([(net16, prefixlen, mode)], default_mode) -- longest prefix first */
static PyObject *Datapath_set_policy(DatapathObject *d, PyObject *args) {
    PyObject *rules;
    int def;
    if (!PyArg_ParseTuple(args, "O!i", &PyList_Type, &rules, &def)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(rules);
    uint8_t (*net)[16] = calloc(n ? n : 1, 16);
    int *len = calloc(n ? n : 1, sizeof(int)), *mode = calloc(n ? n : 1, sizeof(int));
    if (!net || !len || !mode) {
        free(net); free(len); free(mode);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *b;
        Py_ssize_t bl;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(rules, i), "y#ii", &b, &bl, &len[i], &mode[i]) || bl != 16 || len[i] < 0 ||
            len[i] > 128 || mode[i] < 0 || mode[i] > 3) {
            free(net); free(len); free(mode);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "rule: (16 octets, 0..128, mode 0..3)");
            return NULL;
        }
        memcpy(net[i], b, 16);
    }
    LOCK(d);
    free(d->rule_net); free(d->rule_len); free(d->rule_mode);
    d->rule_net = net; d->rule_len = len; d->rule_mode = mode; d->nrules = (int)n;
    d->default_mode = def;
    UNLOCK(d);
    Py_RETURN_NONE;
}

static PyObject *Datapath_set_clock(DatapathObject *d, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"wall_offset_ns", NULL};
    long long off;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "L", kwlist, &off)) return NULL;
    LOCK(d);
    d->wall_offset_ns = off;
    UNLOCK(d);
    Py_RETURN_NONE;
}

/* set_floors(send_floor=None, recv_floor=None, reserved=None, epoch=None, rx_recorded=None) */
static PyObject *Datapath_set_floors(DatapathObject *d, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"send_floor", "recv_floor", "reserved", "epoch", "rx_recorded", NULL};
    PyObject *o[5] = {Py_None, Py_None, Py_None, Py_None, Py_None};
    long long v[5] = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OOOOO", kwlist, &o[0], &o[1], &o[2], &o[3], &o[4])) return NULL;
    for (int i = 0; i < 5; i++)
        if (o[i] != Py_None) {
            v[i] = PyLong_AsLongLong(o[i]);
            if (PyErr_Occurred()) return NULL;
            if (v[i] < -1) {
                PyErr_SetString(PyExc_ValueError, "set_floors: values are -1 (none) or more");
                return NULL;
            }
        }
    LOCK(d);
    if (o[0] != Py_None) d->send_floor = v[0];
    if (o[1] != Py_None) d->recv_floor = v[1];
    if (o[2] != Py_None) d->reserved = v[2];
    if (o[3] != Py_None && v[3] > (long long)d->A) d->A = (uint64_t)v[3];
    if (o[4] != Py_None) d->rx_recorded = v[4];
    UNLOCK(d);
    Py_RETURN_NONE;
}

static PyObject *Datapath_floors(DatapathObject *d, PyObject *Py_UNUSED(a)) {
    LOCK(d);
    PyObject *r = Py_BuildValue("{sLsLsLsKsL}", "send_floor", (long long)d->send_floor, "recv_floor",
                                (long long)d->recv_floor, "reserved", (long long)d->reserved, "epoch",
                                (unsigned long long)d->A, "rx_recorded", (long long)d->rx_recorded);
    UNLOCK(d);
    return r;
}

/* feed_random(list of u32) -> how many were taken (the pool holds 4096) */
static PyObject *Datapath_feed_random(DatapathObject *d, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "feed_random: a sequence of u32");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), taken = 0;
    uint32_t *tmp = malloc((n ? n : 1) * sizeof(uint32_t));
    if (!tmp) { Py_DECREF(seq); return PyErr_NoMemory(); }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long v = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred() || v > 0xFFFFFFFFUL) {
            free(tmp); Py_DECREF(seq);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "feed_random: u32 values only");
            return NULL;
        }
        tmp[i] = (uint32_t)v;
    }
    Py_DECREF(seq);
    LOCK(d);
    for (; taken < n && d->pool_count < d->pool_cap; taken++) {
        d->pool[(d->pool_head + d->pool_count) % d->pool_cap] = tmp[taken];
        d->pool_count++;
    }
    UNLOCK(d);
    free(tmp);
    return PyLong_FromSsize_t(taken);
}

static int parse_tkey(PyObject *o, tkey_t *k) {
    char *b;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(o, &b, &n) < 0) return -1;
    if (n != 37) {
        PyErr_SetString(PyExc_ValueError, "a packed 5-tuple is 37 octets");
        return -1;
    }
    memset(k, 0, sizeof *k);
    memcpy(k->b, b, 37);
    return 0;
}

/* install_key(wire_tuple37, kri, aead_id, key, base_nonce, seal) */
static PyObject *Datapath_install_key(DatapathObject *d, PyObject *args) {
    PyObject *t;
    unsigned long long kri;
    int id, seal;
    long long limited_until = 0;
    Py_buffer key = {0}, base = {0};
    if (!PyArg_ParseTuple(args, "SKiz*z*p|L", &t, &kri, &id, &key, &base, &seal, &limited_until)) return NULL;
    tkey_t k;
    PyObject *res = NULL;
    if (parse_tkey(t, &k) == 0) {
        if (!aead_cipher(id) || (key.buf && (key.len != aead_keylen(id) || !base.buf || base.len != 12))) {
            PyErr_SetString(PyExc_ValueError, "install_key: wrong AEAD id or key/nonce length");
        } else {
            LOCK(d);
            int rc = key_install(d, &k, kri, id, key.buf, base.buf, seal, limited_until);
            UNLOCK(d);
            if (rc) PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused the key");
            else res = Py_NewRef(Py_None);
        }
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&base);
    return res;
}

static PyObject *Datapath_clear_keys(DatapathObject *d, PyObject *Py_UNUSED(a)) {
    LOCK(d);
    keys_clear(d);
    d->req_count = 0;
    UNLOCK(d);
    Py_RETURN_NONE;
}

/* requests() -> [(kind, wire_tuple37 or None, kri, seal)] and empties the ring */
static PyObject *Datapath_requests(DatapathObject *d, PyObject *Py_UNUSED(a)) {
    req_t got[REQ_RING];
    uint32_t n;
    LOCK(d);
    n = d->req_count;
    for (uint32_t i = 0; i < n; i++) got[i] = d->reqs[(d->req_head + i) % REQ_RING];
    d->req_head = (d->req_head + n) % REQ_RING;
    d->req_count = 0;
    UNLOCK(d);
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    for (uint32_t i = 0; i < n; i++) {
        PyObject *item = got[i].kind == REQ_KEY
                             ? Py_BuildValue("(iy#KO)", got[i].kind, (char *)got[i].key.b, (Py_ssize_t)37,
                                             (unsigned long long)got[i].kri, got[i].seal ? Py_True : Py_False)
                             : Py_BuildValue("(iOKO)", got[i].kind, Py_None, (unsigned long long)got[i].kri,
                                             got[i].seal ? Py_True : Py_False);
        if (!item) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

/* process(hook, packet, now_ns) -> (outcome, new_packet or None, drop) : the code the loop runs */
static PyObject *Datapath_process(DatapathObject *d, PyObject *args) {
    int hook;
    Py_buffer pkt;
    long long now;
    if (!PyArg_ParseTuple(args, "iy*L", &hook, &pkt, &now)) return NULL;
    if (pkt.len > 65535 + 40) {
        PyBuffer_Release(&pkt);
        PyErr_SetString(PyExc_ValueError, "packet too long");
        return NULL;
    }
    int changed = 0, drop = 0, out;
    PyObject *newpkt = NULL;
    LOCK(d);
    if (hook == HOOK_EGRESS) {
        out = egress(d, pkt.buf, (int)pkt.len, now, &changed);
        d->c_out[out]++;
    } else {
        out = ingress(d, pkt.buf, (int)pkt.len, now, &drop);
        d->c_in[out]++;
    }
    if (changed) newpkt = PyBytes_FromStringAndSize((char *)d->out, d->out_len);
    UNLOCK(d);
    PyBuffer_Release(&pkt);
    if (changed && !newpkt) return NULL;
    PyObject *r = Py_BuildValue("(iOO)", out, changed ? newpkt : Py_None, drop ? Py_True : Py_False);
    Py_XDECREF(newpkt);
    return r;
}

static PyObject *flow_dict(DatapathObject *d, flow_t *f) {
    PyObject *none = Py_None;
#define NS(v) ((v) == NONE_NS ? Py_NewRef(none) : PyLong_FromLongLong(v))
    PyObject *lr = NS(f->last_recv), *sb = NS(f->sent_before_recv), *ls = NS(f->last_send), *orot = NS(f->other_rotated);
#undef NS
    PyObject *own = f->own_valid ? PyLong_FromUnsignedLongLong(f->own_kri) : Py_NewRef(none);
    PyObject *oth = f->other_valid ? PyLong_FromUnsignedLongLong(f->other_kri) : Py_NewRef(none);
    PyObject *prev = f->prev_valid ? PyLong_FromUnsignedLongLong(f->other_prev_kri) : Py_NewRef(none);
    PyObject *r = Py_BuildValue(
        "{sy#sIsIsNsNsNsLsNsNsNsIsIsIsNsKsK}", "flow", (char *)f->key.b, (Py_ssize_t)37, "next_psntp",
        (unsigned)f->next_psntp, "psnlr", (unsigned)f->psnlr, "last_recv_ns", lr, "sent_before_recv_ns", sb,
        "last_send_ns", ls, "last_seen_ns", (long long)f->last_seen, "own_kri", own, "other_kri", oth, "other_prev_kri", prev, "probe", (unsigned)f->cursor, "prseq_state",
        (unsigned)f->pr_state, "prseq_used", (unsigned)f->pr_used, "other_rotated_ns", orot, "sent",
        (unsigned long long)f->sent, "received", (unsigned long long)f->received);
    (void)d;
    return r;
}

/* flow(local_tuple37) -> dict or None */
static PyObject *Datapath_flow(DatapathObject *d, PyObject *arg) {
    tkey_t k;
    if (parse_tkey(arg, &k) < 0) return NULL;
    LOCK(d);
    uint32_t i = flow_find(d, &k);
    PyObject *r = i ? flow_dict(d, F(d, i)) : Py_NewRef(Py_None);
    UNLOCK(d);
    return r;
}

/* seen(local_tuple37, kri) -> sorted list of Random Numbers recorded for kri, or None */
static PyObject *Datapath_seen(DatapathObject *d, PyObject *args) {
    PyObject *t;
    unsigned long long kri;
    if (!PyArg_ParseTuple(args, "SK", &t, &kri)) return NULL;
    tkey_t k;
    if (parse_tkey(t, &k) < 0) return NULL;
    LOCK(d);
    uint32_t i = flow_find(d, &k);
    PyObject *r;
    int s = i ? seen_slot(F(d, i), kri) : -1;
    if (s < 0) {
        r = Py_NewRef(Py_None);
    } else {
        r = PyList_New(0);
        for (int rn = 0; r && rn < 32768; rn++)
            if ((F(d, i)->seen[s][rn >> 6] >> (rn & 63)) & 1) {
                PyObject *v = PyLong_FromLong(rn);
                if (!v || PyList_Append(r, v) < 0) { Py_XDECREF(v); Py_CLEAR(r); break; }
                Py_DECREF(v);
            }
    }
    UNLOCK(d);
    return r;
}

/* flows() -> list of local tuples in LRU order (oldest first) */
static PyObject *Datapath_flows(DatapathObject *d, PyObject *Py_UNUSED(a)) {
    LOCK(d);
    PyObject *r = PyList_New(0);
    for (uint32_t i = d->lru_head; r && i; i = F(d, i)->next) {
        PyObject *b = PyBytes_FromStringAndSize((char *)F(d, i)->key.b, 37);
        if (!b || PyList_Append(r, b) < 0) { Py_XDECREF(b); Py_CLEAR(r); break; }
        Py_DECREF(b);
    }
    UNLOCK(d);
    return r;
}

static PyObject *Datapath_expire(DatapathObject *d, PyObject *args) {
    long long now;
    if (!PyArg_ParseTuple(args, "L", &now)) return NULL;
    long n = 0;
    LOCK(d);
    for (uint32_t i = d->lru_head; i;) {
        uint32_t nx = F(d, i)->next;
        if (now - F(d, i)->last_seen > d->idle_ns) {
            flow_forget(d, i);
            n++;
        }
        i = nx;
    }
    UNLOCK(d);
    return PyLong_FromLong(n);
}

/* drain(max) -> bytes of whole records (REC_SIZE each) */
static PyObject *Datapath_drain(DatapathObject *d, PyObject *args) {
    Py_ssize_t max;
    if (!PyArg_ParseTuple(args, "n", &max)) return NULL;
    uint64_t w = __atomic_load_n(&d->ring_w, __ATOMIC_ACQUIRE), r = d->ring_r;
    uint64_t n = w - r;
    if ((Py_ssize_t)n > max) n = (uint64_t)max;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * REC_SIZE));
    if (!out) return NULL;
    char *p = PyBytes_AS_STRING(out);
    for (uint64_t i = 0; i < n; i++) memcpy(p + i * REC_SIZE, d->ring + ((r + i) & (d->ring_cap - 1)) * REC_SIZE, REC_SIZE);
    __atomic_store_n(&d->ring_r, r + n, __ATOMIC_RELEASE);
    return out;
}

static PyObject *Datapath_stats(DatapathObject *d, PyObject *Py_UNUSED(a)) {
    LOCK(d);
    PyObject *in = PyTuple_New(O_COUNT), *out = PyTuple_New(O_COUNT);
    for (int i = 0; in && out && i < O_COUNT; i++) {
        PyTuple_SET_ITEM(in, i, PyLong_FromUnsignedLongLong(d->c_in[i]));
        PyTuple_SET_ITEM(out, i, PyLong_FromUnsignedLongLong(d->c_out[i]));
    }
    PyObject *r = (in && out) ? Py_BuildValue(
        "{sNsNsKsKsKsKsIsKsKsKsKsKsIsIsIsIsKsKsi}", "ingress", in, "egress", out, "handled", (unsigned long long)d->c_handled,
        "busy_ns", (unsigned long long)d->c_busy_ns, "records_dropped", (unsigned long long)d->rec_dropped,
        "records_sampled_out", (unsigned long long)d->rec_sampled, "record_stride", (unsigned)d->rec_stride,
        "key_requests", (unsigned long long)d->c_key_requests, "requests_dropped",
        (unsigned long long)d->c_req_dropped, "not_read", (unsigned long long)d->c_not_read, "batches",
        (unsigned long long)d->c_batches, "kernel_timestamps", (unsigned long long)d->c_kernel_ts, "flows",
        d->nflows, "gp_link_local", d->gp[0], "gp_global", d->gp[1], "pool", d->pool_count, "held",
        (unsigned long long)d->c_held, "held_expired", (unsigned long long)d->c_held_expired, "held_now", d->nheld) : NULL;
    UNLOCK(d);
    if (!r) { Py_XDECREF(in); Py_XDECREF(out); }
    return r;
}

/* ------------------------------------------------------------------------------------------ */
/* the NFQUEUE loop                                                                              */


static void flush_batch(loopctx_t *c) {
    if (c->pending) {
        nfq_set_verdict_batch(c->qh, c->pending_id, NF_ACCEPT);
        c->d->c_batches++;
        c->pending = 0;
    }
}

static void give_verdict(loopctx_t *c, uint32_t id, int changed, int drop) {
    DatapathObject *d = c->d;
    if (changed) {
        flush_batch(c); /* keep the order: everything before this packet goes first */
        /* last_send stays the time read just before sealing (the time the option carries): on a
         * veth the verdict call itself delivers the packet to the peer, so a time read after it
         * would be later than the peer's receive stamp and make RTT samples negative. */
        nfq_set_verdict(c->qh, id, NF_ACCEPT, (uint32_t)d->out_len, d->out);
    } else if (drop) {
        flush_batch(c);
        nfq_set_verdict(c->qh, id, NF_DROP, 0, NULL);
    } else if (d->nheld) {
        nfq_set_verdict(c->qh, id, NF_ACCEPT, 0, NULL); /* a batch would take the held packets along */
    } else {
        c->pending_id = id;
        c->pending = 1;
    }
}

/* Process the held packets again (Python has answered, or they waited max_age_ns): verdict each
 * that is decided; returns how many are still held.  Caller holds d->mu. */
static int release_held(DatapathObject *d, int64_t max_age_ns) {
    loopctx_t *c = &d->loop;
    int64_t now = mono_ns();
    int kept = 0;
    for (int i = 0; i < d->nheld; i++) {
        held_t h = d->held[i];
        int changed = 0, drop = 0, out;
        out = h.hook == HOOK_EGRESS ? egress(d, h.buf, h.len, -1, &changed) : ingress(d, h.buf, h.len, h.t, &drop);
        if (pending(out) && now - h.held_at < max_age_ns) {
            d->held[kept++] = h;
            continue;
        }
        if (pending(out)) {
            d->c_held_expired++;
            if (h.hook == HOOK_EGRESS) gp_count(d, h.buf, h.len); /* given up: it leaves bare */
        }
        if (h.hook == HOOK_EGRESS) d->c_out[out]++;
        else d->c_in[out]++;
        if (c->qh) {
            if (changed) {
                nfq_set_verdict(c->qh, h.id, NF_ACCEPT, (uint32_t)d->out_len, d->out);
            } else {
                nfq_set_verdict(c->qh, h.id, drop ? NF_DROP : NF_ACCEPT, 0, NULL);
            }
        }
        free(h.buf);
    }
    d->nheld = kept;
    return kept;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa, void *data) {
    loopctx_t *c = data;
    DatapathObject *d = c->d;
    (void)msg;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (!ph) return 0;
    uint32_t id = ntohl(ph->packet_id);
    unsigned char *payload = NULL;
    int n = nfq_get_payload(nfa, &payload);
    int64_t t0 = mono_ns();
    int changed = 0, drop = 0, out;
    if (n < 0) {
        flush_batch(c);
        nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
        return 0;
    }
    int64_t now = -1;
    d->tx_cold = d->last_pkt_t && t0 - d->last_pkt_t > 1000000;
    d->last_pkt_t = t0;
    if (ph->hook == NF_INET_LOCAL_OUT) {
        out = egress(d, payload, n, -1, &changed);
    } else {
        struct timeval tv;
        now = t0;
        if (nfq_get_timestamp(nfa, &tv) == 0 && (tv.tv_sec || tv.tv_usec)) {
            int64_t k = ((int64_t)tv.tv_sec * 1000000000LL + (int64_t)tv.tv_usec * 1000LL) - d->wall_offset_ns;
            if (k <= t0 && t0 - k < 1000000000LL) {
                now = k;
                d->c_kernel_ts++;
            }
        }
        out = ingress(d, payload, n, now, &drop);
    }
    if (pending(out) && d->nheld < HELD_MAX) {
        held_t *h = &d->held[d->nheld];
        h->buf = malloc((size_t)n);
        if (h->buf) { /* held until Python answers (release_held); no verdict yet */
            memcpy(h->buf, payload, (size_t)n);
            h->id = id;
            h->hook = ph->hook == NF_INET_LOCAL_OUT ? HOOK_EGRESS : HOOK_INGRESS;
            h->len = n;
            h->t = now;
            h->held_at = t0;
            d->nheld++;
            d->c_held++;
            flush_batch(c); /* what came before goes out; nothing after may be batched past it */
            d->c_handled++;
            d->c_busy_ns += (uint64_t)(mono_ns() - t0);
            return 0;
        }
    }
    if (ph->hook == NF_INET_LOCAL_OUT) {
        if (pending(out)) gp_count(d, payload, n); /* nowhere to hold it: it leaves bare */
        d->c_out[out]++;
    } else {
        d->c_in[out]++;
    }
    give_verdict(c, id, changed, drop);
    d->c_handled++;
    d->c_busy_ns += (uint64_t)(mono_ns() - t0);
    return 0;
}

/* bind_queue(queue, max_len=4096): bind NFQUEUE `queue` (copy mode, fail-open, big receive buffer). */
static PyObject *Datapath_bind_queue(DatapathObject *d, PyObject *args) {
    int queue;
    unsigned int max_len = 4096;
    if (!PyArg_ParseTuple(args, "i|I", &queue, &max_len)) return NULL;
    if (d->nfq_h) {
        PyErr_SetString(PyExc_RuntimeError, "a queue is bound already");
        return NULL;
    }
    struct nfq_handle *h = nfq_open();
    if (!h) {
        PyErr_SetString(PyExc_OSError, "nfq_open failed (root needed)");
        return NULL;
    }
    d->loop.d = d;
    d->loop.pending = 0;
    struct nfq_q_handle *qh = nfq_create_queue(h, (uint16_t)queue, on_packet, &d->loop);
    if (!qh) {
        nfq_close(h);
        PyErr_Format(PyExc_OSError, "cannot bind NFQUEUE %d (in use by another process, or root needed)", queue);
        return NULL;
    }
    if (nfq_set_mode(qh, NFQNL_COPY_PACKET, 0xFFFF) < 0 ||
        nfq_set_queue_flags(qh, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN) < 0) {
        nfq_destroy_queue(qh);
        nfq_close(h);
        PyErr_SetString(PyExc_OSError, "cannot configure the queue (copy mode, fail-open)");
        return NULL;
    }
    nfq_set_queue_maxlen(qh, max_len);
    int fd = nfq_fd(h), rcvbuf = 4 << 20, one = 1;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf);
    setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);
    d->loop.qh = qh;
    d->nfq_h = h;
    Py_RETURN_NONE;
}

/* serve(stop_fd): the packet loop, without the GIL, until stop_fd is readable. */
static PyObject *Datapath_serve(DatapathObject *d, PyObject *args) {
    int stop_fd;
    if (!PyArg_ParseTuple(args, "i", &stop_fd)) return NULL;
    if (!d->nfq_h) {
        PyErr_SetString(PyExc_RuntimeError, "bind_queue first");
        return NULL;
    }
    struct nfq_handle *h = d->nfq_h;
    loopctx_t *c = &d->loop;
    int fd = nfq_fd(h);
    uint8_t *buf = malloc(MAX_PKT + 4096);
    if (!buf) return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    /* Block in recv() itself (no poll() per packet: one syscall less on the latency path); a
     * receive timeout lets the loop look at stop_fd ten times a second. */
    struct timeval tmo = {.tv_sec = 0, .tv_usec = 100000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tmo, sizeof tmo);
    struct pollfd stop = {.fd = stop_fd, .events = POLLIN};
    for (;;) {
        ssize_t r = recv(fd, buf, MAX_PKT + 4096, 0);
        if (r < 0) {
            if (poll(&stop, 1, 0) > 0) break;
            continue; /* timeout, EINTR, ENOBUFS */
        }
        pthread_mutex_lock(&d->mu);
        nfq_handle_packet(h, (char *)buf, (int)r);
        for (int burst = 1; burst < 256; burst++) {
            r = recv(fd, buf, MAX_PKT + 4096, MSG_DONTWAIT);
            if (r < 0) break; /* EAGAIN: the burst is over */
            nfq_handle_packet(h, (char *)buf, (int)r);
            if ((burst & 63) == 63) flush_batch(c);
        }
        flush_batch(c);
        pthread_mutex_unlock(&d->mu);
    }
    Py_END_ALLOW_THREADS
    free(buf);
    Py_RETURN_NONE;
}

/* unbind_queue(): after serve() returned. */
static PyObject *Datapath_unbind_queue(DatapathObject *d, PyObject *Py_UNUSED(a)) {
    LOCK(d);
    if (d->nheld) release_held(d, 0); /* every held packet gets its verdict */
    UNLOCK(d);
    if (d->nfq_h) {
        nfq_destroy_queue(d->loop.qh);
        nfq_close(d->nfq_h);
        d->nfq_h = NULL;
        d->loop.qh = NULL;
    }
    Py_RETURN_NONE;
}

/* release_held(max_age_ns) -> packets still held */
static PyObject *Datapath_release_held(DatapathObject *d, PyObject *args) {
    long long max_age;
    if (!PyArg_ParseTuple(args, "L", &max_age)) return NULL;
    int kept;
    LOCK(d);
    kept = d->nheld ? release_held(d, max_age) : 0;
    UNLOCK(d);
    return PyLong_FromLong(kept);
}

static PyObject *Datapath_set_notify_fd(DatapathObject *d, PyObject *args) {
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd)) return NULL;
    LOCK(d);
    d->notify_fd = fd;
    UNLOCK(d);
    Py_RETURN_NONE;
}

static PyMethodDef Datapath_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))Datapath_configure, METH_VARARGS | METH_KEYWORDS, "settings"},
    {"set_policy", (PyCFunction)Datapath_set_policy, METH_VARARGS, "set_policy(rules, default_mode)"},
    {"set_clock", (PyCFunction)(void (*)(void))Datapath_set_clock, METH_VARARGS | METH_KEYWORDS,
     "set_clock(wall_offset_ns): realtime - monotonic, sampled by Python"},
    {"set_floors", (PyCFunction)(void (*)(void))Datapath_set_floors, METH_VARARGS | METH_KEYWORDS,
     "set_floors(send_floor, recv_floor, reserved, epoch)"},
    {"floors", (PyCFunction)Datapath_floors, METH_NOARGS, "send/recv floors, reservation, epoch A"},
    {"feed_random", (PyCFunction)Datapath_feed_random, METH_O, "feed_random(u32 list) -> taken"},
    {"install_key", (PyCFunction)Datapath_install_key, METH_VARARGS,
     "install_key(tuple37, kri, aead, key, nonce, seal[, limited_until_ns]): key None = no key (or limited)"},
    {"clear_keys", (PyCFunction)Datapath_clear_keys, METH_NOARGS, "forget every key (reload)"},
    {"requests", (PyCFunction)Datapath_requests, METH_NOARGS, "pending key/reservation requests"},
    {"process", (PyCFunction)Datapath_process, METH_VARARGS, "process(hook, packet, now_ns)"},
    {"flow", (PyCFunction)Datapath_flow, METH_O, "flow(local tuple37) -> state dict"},
    {"seen", (PyCFunction)Datapath_seen, METH_VARARGS, "seen(local tuple37, kri) -> replay bitmap as a list"},
    {"flows", (PyCFunction)Datapath_flows, METH_NOARGS, "local tuples, least recently used first"},
    {"expire", (PyCFunction)Datapath_expire, METH_VARARGS, "expire(now_ns) -> flows forgotten"},
    {"drain", (PyCFunction)Datapath_drain, METH_VARARGS, "drain(max) -> records"},
    {"stats", (PyCFunction)Datapath_stats, METH_NOARGS, "counters"},
    {"bind_queue", (PyCFunction)Datapath_bind_queue, METH_VARARGS, "bind_queue(queue[, max_len])"},
    {"serve", (PyCFunction)Datapath_serve, METH_VARARGS, "serve(stop_fd): the packet loop, GIL released"},
    {"unbind_queue", (PyCFunction)Datapath_unbind_queue, METH_NOARGS, "unbind the queue"},
    {"set_notify_fd", (PyCFunction)Datapath_set_notify_fd, METH_VARARGS, "eventfd written on each request"},
    {"release_held", (PyCFunction)Datapath_release_held, METH_VARARGS,
     "release_held(max_age_ns) -> held: process held packets again, verdict what is decided"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject DatapathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pdmv2.native._datapath.Datapath",
    .tp_basicsize = sizeof(DatapathObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The native per-packet path: Datapath(max_flows=65536, key_slots=16384, ring=65536).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Datapath_init,
    .tp_dealloc = (destructor)Datapath_dealloc,
    .tp_methods = Datapath_methods,
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_datapath", "PDMv2 native data path", -1, NULL};

PyMODINIT_FUNC PyInit__datapath(void) {
    if (PyType_Ready(&CipherType) < 0 || PyType_Ready(&DatapathType) < 0) return NULL;
    /* keyed hashes (spoofed flows cannot aim at one bucket); one key for the process */
    if (getrandom(g_hash_key, sizeof g_hash_key, 0) != (ssize_t)sizeof g_hash_key) {
        g_hash_key[0] = (uint64_t)mono_ns();
        g_hash_key[1] = mix64(g_hash_key[0]);
    }
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    Py_INCREF(&CipherType);
    Py_INCREF(&DatapathType);
    if (PyModule_AddObject(m, "Cipher", (PyObject *)&CipherType) < 0 ||
        PyModule_AddObject(m, "Datapath", (PyObject *)&DatapathType) < 0 ||
        PyModule_AddIntConstant(m, "RECORD_SIZE", REC_SIZE) < 0 || PyModule_AddIntConstant(m, "OUTCOMES", O_COUNT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
