/*
 * mmapipc_record.h: one record in a file mapped MAP_SHARED, with mmapipc's
 * sequence lock in the record's padding, for C programs.  Header only: every
 * function is static inline; include it and compile with gcc's default GNU
 * dialect (or define _GNU_SOURCE before any include).  Linux only (futex).
 *
 * The wire protocol, the same as the mmapipc Python package's, byte for byte:
 *   - a marker byte at marker_off: 0xA5 says a sequence lock is kept in the
 *     padding, 0xA6 says so too and that the writer wakes waiters, 0xA7 that
 *     and that someone sleeps on the futex word (set by the waiter);
 *   - a 2-aligned native-endian 16-bit sequence at seq_off: a store makes it
 *     odd by compare-and-swap from an even value, swaps in its marker, copies
 *     the fields around the lock bytes, makes it even again, then FUTEX_WAKEs
 *     the aligned 32-bit word that holds the sequence (only when that word lies
 *     inside the record) if the marker it swapped out was 0xA7, or always when
 *     the marker lies outside that word (no waiter can say it is there);
 *   - a waiter that would sleep sets 0xA7 by compare-and-swap of the whole
 *     word from the value it read before it compared the fields (so a store in
 *     between fails it), through a writable mapping of that page; a waiter that
 *     may not write the file looks instead of sleeping (every 1 ms here);
 *   - a reader accepts a copy through the lock when the sequence was even,
 *     unchanged across the copy and moved since its last record; otherwise
 *     (no marker: a legacy writer; a sequence stuck odd) when two copies agree.
 * For struct STU { int id; char name[20]; char sex; } (28 bytes) the marker is
 * at 25 and the sequence at 26.
 *
 *   mmapipc_rec *r = mmapipc_rec_open("/tmp/x", MMAPIPC_STU_SIZE,
 *                                     MMAPIPC_STU_MARKER, MMAPIPC_STU_SEQ, 0);
 *   struct STU s;
 *   while (mmapipc_rec_wait(r, &s, 1000000000LL) >= 0) ...
 *
 * What it does NOT do (the Python package does):
 *   - no SIGBUS guard: if another process truncates the file, touching the
 *     mapping raises SIGBUS; a C program that must survive that handles its
 *     own SIGBUS;
 *   - no path-walking rules: the writer refuses a symlink as the last
 *     component only (O_NOFOLLOW), not in the directories above it, and does
 *     not check who owns the file or its directory;
 *   - no watching of the path (a replaced or truncated file is not noticed);
 *   - a handle is not safe to share between threads without a lock;
 *   - C (C11 atomics) only, not C++.
 *
 * The lower-level primitives (mmapipc_rec_geom and the mmapipc_rec__ functions)
 * are the protocol itself; the mmapipc package's own C core is built on them.
 */
#ifndef MMAPIPC_RECORD_H
#define MMAPIPC_RECORD_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MMAPIPC_REC_LOCK_MARKER 0xA5    /* a sequence lock in the padding */
#define MMAPIPC_REC_NOTIFY_MARKER 0xA6  /* that, and the writer wakes waiters */
#define MMAPIPC_REC_WAITED_MARKER 0xA7  /* that, and a waiter sleeps on the futex word */

/* struct STU of mmap_w/mmap_r: size, marker offset, sequence offset. */
#define MMAPIPC_STU_SIZE 28
#define MMAPIPC_STU_MARKER 25
#define MMAPIPC_STU_SEQ 26

#define MMAPIPC_REC_WRITE 1   /* mmapipc_rec_open: map for writing (creates the file) */

/* mmapipc_rec_wait sleeps on a notifying writer's futex at most this long before it
 * looks again: a legacy writer that takes the file over wakes nobody. */
#define MMAPIPC_REC_SLICE_NS 200000000LL

/* ---- protocol primitives ----------------------------------------------- */

/* Where the lock lives in a record of size bytes (-1, -1: no lock). */
struct mmapipc_rec_geom {
    size_t size;
    int marker_off, seq_off;
};

/* What a reader knows of the last record it accepted. */
struct mmapipc_rec_rstate {
    uint16_t seq;        /* its sequence */
    uint32_t stuck;      /* marker and odd sequence known to be stuck */
    int stuck_valid;
};

static inline int64_t mmapipc_rec__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void mmapipc_rec__relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* Offsets in range, the sequence 2-aligned, no overlap (or -1, -1). */
static inline int mmapipc_rec__geom_ok(const struct mmapipc_rec_geom *g)
{
    if (g->size == 0)
        return 0;
    if (g->marker_off == -1 && g->seq_off == -1)
        return 1;
    if (g->marker_off < 0 || g->seq_off < 0 || (size_t)g->marker_off >= g->size ||
        (size_t)g->seq_off + 2 > g->size)
        return 0;
    return g->seq_off % 2 == 0 && g->marker_off != g->seq_off && g->marker_off != g->seq_off + 1;
}

static inline int mmapipc_rec__has_lock(const struct mmapipc_rec_geom *g)
{
    return g->seq_off >= 0;
}

static inline _Atomic uint16_t *mmapipc_rec__seq_word(const struct mmapipc_rec_geom *g,
                                                      const unsigned char *m)
{
    return (_Atomic uint16_t *)(m + g->seq_off);
}

/* Does the record carry the marker (a sequence lock in its padding)? */
static inline int mmapipc_rec__marked(const struct mmapipc_rec_geom *g, const unsigned char *m)
{
    unsigned char mark = mmapipc_rec__has_lock(g) ? m[g->marker_off] : 0;
    return mark == MMAPIPC_REC_LOCK_MARKER || mark == MMAPIPC_REC_NOTIFY_MARKER ||
           mark == MMAPIPC_REC_WAITED_MARKER;
}

/* Does the writer of the record in m wake waiters (marker 0xA6 or 0xA7)? */
static inline int mmapipc_rec__notifying(const struct mmapipc_rec_geom *g, const unsigned char *m)
{
    unsigned char mark = mmapipc_rec__has_lock(g) ? m[g->marker_off] : 0;
    return mark == MMAPIPC_REC_NOTIFY_MARKER || mark == MMAPIPC_REC_WAITED_MARKER;
}

/* The aligned 32-bit word that holds the sequence: what a notifying writer
 * wakes and its waiters sleep on.  Only where it lies inside the record. */
static inline int mmapipc_rec__can_notify(const struct mmapipc_rec_geom *g)
{
    return mmapipc_rec__has_lock(g) && (size_t)(g->seq_off & ~3) + 4 <= g->size;
}

static inline _Atomic uint32_t *mmapipc_rec__futex_word(const struct mmapipc_rec_geom *g,
                                                        const unsigned char *m)
{
    return (_Atomic uint32_t *)(m + (g->seq_off & ~3));
}

/* Is the marker inside the futex word?  Then a waiter says it is there by
 * setting 0xA7 in the same compare-and-swap that checks the sequence, and the
 * writer wakes only then; else the writer always wakes. */
static inline int mmapipc_rec__flaggable(const struct mmapipc_rec_geom *g)
{
    return mmapipc_rec__can_notify(g) && (g->marker_off & ~3) == (g->seq_off & ~3);
}

/* value, the futex word as read, with its marker byte set to 0xA7. */
static inline uint32_t mmapipc_rec__waited_value(const struct mmapipc_rec_geom *g, uint32_t value)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    unsigned shift = 8u * (unsigned)(g->marker_off & 3);
#else
    unsigned shift = 8u * (3u - (unsigned)(g->marker_off & 3));
#endif
    return (value & ~(0xFFu << shift)) | ((uint32_t)MMAPIPC_REC_WAITED_MARKER << shift);
}

/* Is the sequence in value, the futex word as read, odd (a store under way)? */
static inline int mmapipc_rec__odd_in(const struct mmapipc_rec_geom *g, uint32_t value)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    unsigned low = (unsigned)(g->seq_off & 3);
#else
    unsigned low = 3u - (unsigned)((g->seq_off + 1) & 3);
#endif
    return (value >> (8u * low)) & 1u;
}

/* Say a waiter is there: the word (in a writable mapping) goes from *value,
 * as read before the look, to the same with the marker 0xA7.  1 and *value
 * that; 0 when the word moved since (a store: look again); -1 when the
 * sequence in *value is odd (a store under way, which may already have
 * swapped the marker, or a writer that died mid-store): look, do not sleep. */
static inline int mmapipc_rec__flag_waiter(const struct mmapipc_rec_geom *g, _Atomic uint32_t *rw,
                                           uint32_t *value)
{
    uint32_t want = mmapipc_rec__waited_value(g, *value), seen = *value;
    if (mmapipc_rec__odd_in(g, seen))
        return -1;
    if (seen == want)
        return 1;
    if (!atomic_compare_exchange_strong_explicit(rw, &seen, want, memory_order_acq_rel,
                                                 memory_order_relaxed))
        return 0;
    *value = want;
    return 1;
}

/* A writable mapping of the page that holds the futex word, made by opening
 * the file under descriptor fd again read-write (/proc/self/fd: the same file,
 * with this process's permission to write it): the word in it, and in *base
 * and *len what to munmap; NULL with errno when it may not be written. */
static inline _Atomic uint32_t *mmapipc_rec__map_word_rw(int fd, const struct mmapipc_rec_geom *g,
                                                         void **base, size_t *len)
{
    char proc[32] = "/proc/self/fd/", digits[12];
    size_t page = (size_t)sysconf(_SC_PAGESIZE), off = (size_t)(g->seq_off & ~3);
    size_t start = off / page * page, at = strlen(proc);
    int n = 0, rw, saved;
    void *m;
    do
        digits[n++] = (char)('0' + fd % 10);
    while ((fd /= 10) > 0 && n < 11);
    while (n > 0)
        proc[at++] = digits[--n];
    proc[at] = '\0';
    rw = open(proc, O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (rw < 0)
        return NULL;
    m = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, rw, (off_t)start);
    saved = errno;
    close(rw);
    if (m == MAP_FAILED) {
        errno = saved;
        return NULL;
    }
    *base = m;
    *len = page;
    return (_Atomic uint32_t *)((unsigned char *)m + (off - start));
}

/* Is errno, from mmapipc_rec__map_word_rw, a passing reason (no descriptor or memory
 * left, a lease being broken, a signal) to try again at the next wait, rather than a
 * refusal (EACCES, EROFS, no /proc...) that lasts as long as the descriptor? */
static inline int mmapipc_rec__rw_passing(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOMEM || err == EAGAIN ||
           err == EWOULDBLOCK || err == EINTR;
}

/* A waiter's writable mapping of the futex word's page, made when first needed. */
struct mmapipc_rec_rw {
    _Atomic uint32_t *word;   /* the futex word in it (NULL: not mapped) */
    void *base;               /* the mapping */
    size_t len;
    int denied;               /* this process may not write the file: look instead (not
                               * set for a passing failure: tried again next time) */
};

/* The futex word, writable, mapped through descriptor fd first if need be; NULL
 * when this process may not write the file, or could not map it just now. */
static inline _Atomic uint32_t *mmapipc_rec__rw_word(struct mmapipc_rec_rw *rw, int fd,
                                                     const struct mmapipc_rec_geom *g)
{
    if (rw->word == NULL && !rw->denied) {
        rw->word = mmapipc_rec__map_word_rw(fd, g, &rw->base, &rw->len);
        rw->denied = rw->word == NULL && !mmapipc_rec__rw_passing(errno);
    }
    return rw->word;
}

/* Unmap it (if mapped) and forget it: a new file gets its own. */
static inline void mmapipc_rec__rw_unmap(struct mmapipc_rec_rw *rw)
{
    if (rw->word != NULL)
        munmap(rw->base, rw->len);
    rw->word = NULL;
    rw->denied = 0;
}

static inline void mmapipc_rec__futex_wake(_Atomic uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Sleep until woken or the word no longer holds value (0), until the
 * monotonic time until (1), or a signal (-1, errno EINTR). */
static inline int mmapipc_rec__futex_sleep(_Atomic uint32_t *word, uint32_t value, int64_t until)
{
    struct timespec ts = {(time_t)(until / 1000000000), (long)(until % 1000000000)};
    if (syscall(SYS_futex, word, FUTEX_WAIT_BITSET, value, &ts, NULL,
                FUTEX_BITSET_MATCH_ANY) == 0)
        return 0;
    return errno == ETIMEDOUT ? 1 : errno == EINTR ? -1 : 0;
}

/* The parts of a record outside the lock bytes: at most three [from, to)
 * spans around the marker byte and the two sequence bytes, in either order. */
struct mmapipc_rec__spans {
    size_t from[3], to[3];
    int n;
};

static inline void mmapipc_rec__field_spans(const struct mmapipc_rec_geom *g,
                                            struct mmapipc_rec__spans *sp)
{
    size_t holes[2][2] = {{(size_t)g->marker_off, (size_t)g->marker_off + 1},
                          {(size_t)g->seq_off, (size_t)g->seq_off + 2}};
    int first = g->seq_off < g->marker_off;
    size_t at = 0;
    sp->n = 0;
    if (!mmapipc_rec__has_lock(g)) {
        sp->from[0] = 0;
        sp->to[0] = g->size;
        sp->n = 1;
        return;
    }
    for (int k = 0; k < 2; k++) {
        const size_t *h = holes[k ^ first];
        if (h[0] > at) {
            sp->from[sp->n] = at;
            sp->to[sp->n++] = h[0];
        }
        at = h[1];
    }
    if (g->size > at) {
        sp->from[sp->n] = at;
        sp->to[sp->n++] = g->size;
    }
}

static inline void mmapipc_rec__copy_fields(const struct mmapipc_rec_geom *g, unsigned char *dst,
                                            const unsigned char *src)
{
    struct mmapipc_rec__spans sp;
    mmapipc_rec__field_spans(g, &sp);
    for (int i = 0; i < sp.n; i++)
        memcpy(dst + sp.from[i], src + sp.from[i], sp.to[i] - sp.from[i]);
}

static inline int mmapipc_rec__same_fields(const struct mmapipc_rec_geom *g, const unsigned char *a,
                                           const unsigned char *b)
{
    struct mmapipc_rec__spans sp;
    mmapipc_rec__field_spans(g, &sp);
    for (int i = 0; i < sp.n; i++)
        if (memcmp(a + sp.from[i], b + sp.from[i], sp.to[i] - sp.from[i]) != 0)
            return 0;
    return 1;
}

/* A copy holding the marker: the lock bytes are not the record's, zero them. */
static inline void mmapipc_rec__clear_lock(const struct mmapipc_rec_geom *g, unsigned char *rec)
{
    if (mmapipc_rec__marked(g, rec)) {
        rec[g->marker_off] = 0;
        rec[g->seq_off] = 0;
        rec[g->seq_off + 1] = 0;
    }
}

/* Make the sequence odd for our store: from even by compare-and-swap, so that
 * two writers never store at once; from an odd value that moves (another
 * writer storing), after it goes even; from one that has stood still for
 * stuck_ns (a writer that died mid-store), by taking it over.  Without a
 * marker the sequence bytes are a legacy writer's padding: start from them. */
static inline uint16_t mmapipc_rec__begin_store(const struct mmapipc_rec_geom *g, unsigned char *m,
                                                int64_t stuck_ns)
{
    _Atomic uint16_t *seq = mmapipc_rec__seq_word(g, m);
    uint16_t s = atomic_load_explicit(seq, memory_order_relaxed), last = 0;
    int64_t since = 0;
    if (!mmapipc_rec__marked(g, m))
        s = (uint16_t)(s + (s & 1));
    for (;;) {
        uint16_t want = (uint16_t)(s + 1 + (s & 1));   /* the next odd value */
        if (!(s & 1) || (since && s == last && mmapipc_rec__now_ns() - since > stuck_ns)) {
            if (atomic_compare_exchange_weak_explicit(seq, &s, want, memory_order_acquire,
                                                      memory_order_relaxed))
                return want;
            continue;
        }
        if (!since || s != last) {
            last = s;
            since = mmapipc_rec__now_ns();
        }
        mmapipc_rec__relax();
        s = atomic_load_explicit(seq, memory_order_relaxed);
    }
}

/* The store itself: the sequence goes odd, the marker is swapped in (notify:
 * the one that promises wake-ups), the fields are copied, the sequence goes
 * even.  It carries on from the sequence in the file, so that writers that
 * take turns (or a writer that died mid-store) keep it moving.  No lock: a
 * plain copy.  1 when the caller must wake the futex word: a waiter said it
 * sleeps there (0xA7 swapped out), or no waiter can say so. */
static inline int mmapipc_rec__store_body(const struct mmapipc_rec_geom *g, unsigned char *m,
                                          const unsigned char *rec, int notify, int64_t stuck_ns)
{
    unsigned char was;
    if (!mmapipc_rec__has_lock(g)) {
        memcpy(m, rec, g->size);
        return 0;
    }
    uint16_t odd = mmapipc_rec__begin_store(g, m, stuck_ns);
    was = atomic_exchange_explicit((_Atomic unsigned char *)(m + g->marker_off),
                                   notify ? MMAPIPC_REC_NOTIFY_MARKER : MMAPIPC_REC_LOCK_MARKER,
                                   memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    mmapipc_rec__copy_fields(g, m, rec);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(mmapipc_rec__seq_word(g, m), (uint16_t)(odd + 1), memory_order_relaxed);
    if (was == MMAPIPC_REC_WAITED_MARKER)
        return 1;
    return notify && mmapipc_rec__can_notify(g) && !mmapipc_rec__flaggable(g);
}

static inline uint32_t mmapipc_rec__pad_value(const struct mmapipc_rec_geom *g,
                                              const unsigned char *m, uint16_t s)
{
    return ((uint32_t)m[g->marker_off] << 16) | s;
}

/* A store is in progress (odd sequence): wait for it, unless this very value
 * has not moved for stuck_ns (a writer that died mid-store, or legacy padding
 * that looks like the lock): then remember it and read by agreement.
 * Returns 1 to read by agreement now, 0 to look again. */
static inline int mmapipc_rec__wait_for_store(const struct mmapipc_rec_geom *g,
                                              const unsigned char *m,
                                              struct mmapipc_rec_rstate *rs, uint16_t s,
                                              uint16_t *last, int64_t *since, int64_t stuck_ns)
{
    int64_t now = mmapipc_rec__now_ns();
    if (*since == 0 || s != *last) {
        *last = s;          /* the sequence moved: a live writer, start again */
        *since = now;
        return 0;
    }
    if (now - *since > stuck_ns) {
        rs->stuck = mmapipc_rec__pad_value(g, m, s);
        rs->stuck_valid = 1;
        return 1;
    }
    if (now - *since < 20000) {
        mmapipc_rec__relax();
    } else {
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* A second copy (into second) that agrees with dst, and, with a marker, an
 * unchanged sequence. */
static inline int mmapipc_rec__copies_agree(const struct mmapipc_rec_geom *g,
                                            const unsigned char *m, const unsigned char *dst,
                                            unsigned char *second, int mark, uint16_t s1)
{
    memcpy(second, m, g->size);
    atomic_thread_fence(memory_order_acquire);
    if (memcmp(dst, second, g->size) != 0)
        return 0;
    return !mark ||
           atomic_load_explicit(mmapipc_rec__seq_word(g, m), memory_order_relaxed) == s1;
}

/* Fill dst with a copy that can be trusted (second: a work buffer of size
 * bytes).  Through the lock when the sequence was even, unchanged across the
 * copy, and moved since the last record (1); otherwise (no lock, a stuck one,
 * or fields that changed while the sequence did not) when two copies agree
 * (0).  -1 when no stable copy came within unstable_ns. */
static inline int mmapipc_rec__fetch(const struct mmapipc_rec_geom *g, const unsigned char *m,
                                     struct mmapipc_rec_rstate *rs, unsigned char *dst,
                                     unsigned char *second, int64_t stuck_ns, int64_t unstable_ns)
{
    int64_t started = 0, since = 0;
    uint16_t last_odd = 0;
    for (unsigned long i = 1;; i++) {
        if ((i & 63) == 0) {
            int64_t now = mmapipc_rec__now_ns();
            if (started == 0)
                started = now;
            if (now - started > unstable_ns)
                return -1;
        }
        int mark = mmapipc_rec__marked(g, m);
        uint16_t s1 =
            mark ? atomic_load_explicit(mmapipc_rec__seq_word(g, m), memory_order_acquire) : 0;
        int stuck = mark && (s1 & 1) && rs->stuck_valid &&
                    rs->stuck == mmapipc_rec__pad_value(g, m, s1);
        if (rs->stuck_valid && !stuck)
            rs->stuck_valid = 0;   /* it moved: a live writer again */
        if (mark && (s1 & 1) && !stuck &&
            !mmapipc_rec__wait_for_store(g, m, rs, s1, &last_odd, &since, stuck_ns))
            continue;
        memcpy(dst, m, g->size);
        atomic_thread_fence(memory_order_acquire);
        if (mark && !(s1 & 1) && !stuck && s1 != rs->seq &&
            atomic_load_explicit(mmapipc_rec__seq_word(g, m), memory_order_relaxed) == s1 &&
            mmapipc_rec__marked(g, m)) {
            rs->seq = s1;
            return 1;
        }
        if (mmapipc_rec__copies_agree(g, m, dst, second, mark, s1)) {
            rs->seq = s1;
            return 0;
        }
    }
}

/* ---- the handle -------------------------------------------------------- */

typedef struct mmapipc_rec {
    struct mmapipc_rec_geom geom;
    struct mmapipc_rec_rstate rs;
    unsigned char *map;
    int fd, flags, have;       /* have: last holds the last record returned */
    unsigned char *last;       /* the last record returned (size bytes) */
    unsigned char *scratch;    /* two work copies (2 * size bytes) */
    int64_t stuck_ns;          /* an odd sequence that stands this long is stuck */
    int64_t unstable_ns;       /* a load gives up (EAGAIN) after this long */
    int64_t poll_ns;           /* wait: how often to look when the writer does not notify */
    struct mmapipc_rec_rw rw;  /* wait: the futex word, writable, to say a waiter is there */
} mmapipc_rec;

/* Open path and map one record of size bytes with the lock's marker and
 * sequence at those offsets (-1, -1: no lock, as legacy mmap_w/mmap_r).
 * flags MMAPIPC_REC_WRITE: create the file (0664), refuse a symlink as its last
 * component (ELOOP), a file with other hard links (EMLINK) or a longer file
 * (EEXIST: it would be shrunk), and size it.  A reader refuses a file shorter
 * than one record (ENODATA).  Both refuse a non-regular file (ENODEV).
 * NULL with errno set on failure (EINVAL: bad offsets). */
static inline mmapipc_rec *mmapipc_rec_open(const char *path, size_t size, int marker_off,
                                            int seq_off, int flags)
{
    struct mmapipc_rec_geom g = {size, marker_off, seq_off};
    int write = (flags & MMAPIPC_REC_WRITE) != 0, fd, saved;
    struct stat st;
    mmapipc_rec *r;
    void *m;
    if (!mmapipc_rec__geom_ok(&g) || path == NULL) {
        errno = EINVAL;
        return NULL;
    }
    fd = write ? open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0664)
               : open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) != 0)
        goto fail;
    if (!S_ISREG(st.st_mode)) {
        errno = ENODEV;
        goto fail;
    }
    if (write && st.st_nlink > 1) {
        errno = EMLINK;
        goto fail;
    }
    if (write && (size_t)st.st_size > size) {
        errno = EEXIST;
        goto fail;
    }
    if (!write && (size_t)st.st_size < size) {
        errno = ENODATA;
        goto fail;
    }
    if (write && (size_t)st.st_size != size && ftruncate(fd, (off_t)size) != 0)
        goto fail;
    r = calloc(1, sizeof *r);
    if (r == NULL)
        goto fail;
    r->last = malloc(3 * size);
    if (r->last == NULL) {
        free(r);
        errno = ENOMEM;
        goto fail;
    }
    m = mmap(NULL, size, write ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        saved = errno;
        free(r->last);
        free(r);
        errno = saved;
        goto fail;
    }
    r->geom = g;
    r->map = m;
    r->fd = fd;
    r->flags = flags;
    r->scratch = r->last + size;
    r->stuck_ns = 250000000;
    r->unstable_ns = 1000000000;
    r->poll_ns = 1000000;
    return r;

fail:
    saved = errno;
    close(fd);
    errno = saved;
    return NULL;
}

/* Store a record (size bytes) under the sequence lock, marked 0xA6, and wake
 * the waiters (a system call only when one sleeps).  0, or -1 with errno
 * (EBADF: a read-only handle). */
static inline int mmapipc_rec_store(mmapipc_rec *r, const void *rec)
{
    int notify;
    if (r == NULL || !(r->flags & MMAPIPC_REC_WRITE)) {
        errno = EBADF;
        return -1;
    }
    notify = mmapipc_rec__can_notify(&r->geom);
    if (mmapipc_rec__store_body(&r->geom, r->map, (const unsigned char *)rec, notify, r->stuck_ns))
        mmapipc_rec__futex_wake(mmapipc_rec__futex_word(&r->geom, r->map));
    return 0;
}

/* Fetch a trusted copy into scratch, with the lock bytes zeroed. */
static inline int mmapipc_rec__load_scratch(mmapipc_rec *r)
{
    if (mmapipc_rec__fetch(&r->geom, r->map, &r->rs, r->scratch, r->scratch + r->geom.size,
                           r->stuck_ns, r->unstable_ns) < 0) {
        errno = EAGAIN;
        return -1;
    }
    mmapipc_rec__clear_lock(&r->geom, r->scratch);
    return 0;
}

/* Load the record into out (size bytes), never torn: its lock bytes read as
 * zeros.  0, or -1 with errno (EAGAIN: it never held still for a second). */
static inline int mmapipc_rec_load(mmapipc_rec *r, void *out)
{
    if (mmapipc_rec__load_scratch(r) != 0)
        return -1;
    memcpy(r->last, r->scratch, r->geom.size);
    r->have = 1;
    memcpy(out, r->last, r->geom.size);
    return 0;
}

/* May this wait sleep on the futex word whose value before the look was
 * *word?  1 yes (*word: the value to sleep on); 0 look again now (the word
 * moved); -1 no, look every poll_ns: a store under way, or the writer only
 * wakes waiters that say they are there, and this process may not write the
 * file to say so. */
static inline int mmapipc_rec__may_sleep(mmapipc_rec *r, uint32_t *word)
{
    const struct mmapipc_rec_geom *g = &r->geom;
    if (!mmapipc_rec__flaggable(g))
        return 1;
    _Atomic uint32_t *rw = mmapipc_rec__rw_word(&r->rw, r->fd, g);
    return rw == NULL ? -1 : mmapipc_rec__flag_waiter(g, rw, word);
}

/* Wait up to timeout_ns for a record whose fields differ from the last one
 * loaded or waited for (a handle that has returned none returns the record at
 * once): 1 and out filled, 0 timed out, -1 with errno (EINTR: a signal).
 * Sleeps on the futex word while the writer notifies (marker 0xA6; 0xA7 set
 * first, so that the writer knows to wake it), looking again at least every
 * MMAPIPC_REC_SLICE_NS, else (or when this process may not write the file)
 * looks every poll_ns (1 ms). */
static inline int mmapipc_rec_wait(mmapipc_rec *r, void *out, long long timeout_ns)
{
    int64_t end = mmapipc_rec__now_ns() + (timeout_ns > 0 ? timeout_ns : 0);
    const struct mmapipc_rec_geom *g = &r->geom;
    for (;;) {
        int notify = mmapipc_rec__can_notify(g) && mmapipc_rec__notifying(g, r->map), may = -1;
        /* the word before the look: a store in between ends the sleep at once */
        uint32_t word = notify ? atomic_load_explicit(mmapipc_rec__futex_word(g, r->map),
                                                      memory_order_acquire) : 0;
        int64_t now, next;
        atomic_thread_fence(memory_order_acquire);
        if (!r->have || !mmapipc_rec__same_fields(g, r->map, r->last)) {
            if (mmapipc_rec__load_scratch(r) != 0)
                return -1;
            if (!r->have || !mmapipc_rec__same_fields(g, r->scratch, r->last)) {
                memcpy(r->last, r->scratch, g->size);
                r->have = 1;
                memcpy(out, r->last, g->size);
                return 1;
            }
        }
        now = mmapipc_rec__now_ns();
        if (now >= end)
            return 0;
        if (notify && (may = mmapipc_rec__may_sleep(r, &word)) == 0)
            continue;
        if (may > 0) {
            /* in slices: a legacy writer that takes the file over wakes nobody */
            next = now + MMAPIPC_REC_SLICE_NS < end ? now + MMAPIPC_REC_SLICE_NS : end;
            if (mmapipc_rec__futex_sleep(mmapipc_rec__futex_word(g, r->map), word, next) < 0)
                return -1;
            continue;
        }
        next = now + r->poll_ns < end ? now + r->poll_ns : end;
        struct timespec ts = {(time_t)(next / 1000000000), (long)(next % 1000000000)};
        int rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        if (rc != 0) {
            errno = rc;
            return -1;
        }
    }
}

/* Unmap, close and free (NULL is fine). */
static inline void mmapipc_rec_close(mmapipc_rec *r)
{
    if (r == NULL)
        return;
    munmap(r->map, r->geom.size);
    mmapipc_rec__rw_unmap(&r->rw);
    close(r->fd);
    free(r->last);
    free(r);
}

#endif
