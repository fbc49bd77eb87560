/*
 * mmapipc C core: the system calls of mmap_w/mmap_r, checked, and guarded
 * copies.  No Python here: every function returns a negative MMAPIPC_E*
 * code on failure and leaves errno set for MMAPIPC_EOS.
 */
#define _GNU_SOURCE
#include "mmapipc.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- SIGBUS guard ------------------------------------------------------ */

struct guard {
    sigjmp_buf env;
    const char *lo, *hi;       /* the mapping being copied */
    volatile sig_atomic_t active;
};

static __thread struct guard *tls_guard __attribute__((tls_model("initial-exec")));
static struct sigaction previous;      /* the handler that was there before */
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
    struct guard *g = tls_guard;
    if (g != NULL && g->active && info != NULL) {
        const char *addr = (const char *)info->si_addr;
        int from_copy = info->si_code > 0 && addr >= g->lo && addr < g->hi;
        if (from_copy || info->si_code == SI_TKILL) {
            g->active = 0;
            siglongjmp(g->env, 1);
        }
    }
    /* Not ours: let the previous handler see it, then die as by default. */
    struct sigaction prev = previous;
    if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction != NULL)
        prev.sa_sigaction(sig, info, ctx);
    else if (!(prev.sa_flags & SA_SIGINFO) && prev.sa_handler != SIG_DFL &&
             prev.sa_handler != SIG_IGN)
        prev.sa_handler(sig);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    if (info == NULL || info->si_code <= 0)
        raise(sig);   /* sent, not a fault: deliver again once we return */
    /* a real fault repeats on return and now kills the process */
}

int mmapipc_guard_install(void)
{
    struct sigaction cur, ours;
    int rc = 0;
    pthread_mutex_lock(&install_lock);
    if (sigaction(SIGBUS, NULL, &cur) != 0) {
        rc = MMAPIPC_EOS;
    } else if (!((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigbus)) {
        memset(&ours, 0, sizeof ours);
        ours.sa_sigaction = on_sigbus;
        ours.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&ours.sa_mask);
        previous = cur;
        if (sigaction(SIGBUS, &ours, NULL) != 0)
            rc = MMAPIPC_EOS;
    }
    pthread_mutex_unlock(&install_lock);
    return rc;
}

/* Begin a guarded region over the mapping; a fault returns MMAPIPC_EBUS. */
#define GUARD_BEGIN(g, base, len)                                    \
    do {                                                             \
        (g).lo = (const char *)(base);                               \
        (g).hi = (g).lo + (len);                                     \
        (g).active = 0;                                              \
        tls_guard = &(g);                                            \
        if (sigsetjmp((g).env, 0) != 0) {                            \
            guard_fault();                                           \
            return MMAPIPC_EBUS;                                     \
        }                                                            \
        atomic_signal_fence(memory_order_seq_cst);                   \
        (g).active = 1;                                              \
        atomic_signal_fence(memory_order_seq_cst);                   \
    } while (0)

#define GUARD_END(g)                                                 \
    do {                                                             \
        atomic_signal_fence(memory_order_seq_cst);                   \
        (g).active = 0;                                              \
        tls_guard = NULL;                                            \
        atomic_signal_fence(memory_order_seq_cst);                   \
    } while (0)

/* After the jump: SIGBUS is still blocked (sigsetjmp did not save the
 * mask, to keep the fast path free of system calls), so unblock it. */
static void guard_fault(void)
{
    sigset_t set;
    tls_guard = NULL;
    sigemptyset(&set);
    sigaddset(&set, SIGBUS);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

/* ---- time and pausing -------------------------------------------------- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* Returns -1 (errno EINTR) when a signal cut the sleep short. */
static int sleep_ns(int64_t ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    return nanosleep(&ts, NULL);
}

/* ---- open and close ---------------------------------------------------- */

/* Carry on from a previous writer's sequence (even if it died mid-store). */
static int read_writer_seq(struct mmapipc_channel *ch)
{
    struct guard g;
    const unsigned char *m = ch->map;
    GUARD_BEGIN(g, m, ch->size);
    if (m[ch->marker_off] == MMAPIPC_SEQ_MARKER) {
        uint16_t s = atomic_load_explicit(
            (_Atomic uint16_t *)(m + ch->seq_off), memory_order_relaxed);
        ch->seq = (uint16_t)(s + (s & 1));
    }
    GUARD_END(g);
    return 0;
}

int mmapipc_open(struct mmapipc_channel *ch, const char *path, int flags)
{
    int writable = (flags & MMAPIPC_WRITE) != 0;
    int oflags, fd, saved;
    struct stat st;
    void *map;

    ch->map = NULL;
    ch->path = path;
    ch->file_size = -1;
    if (writable) {
        oflags = O_RDWR | O_CREAT | O_CLOEXEC;
        if (!(flags & MMAPIPC_FOLLOW_SYMLINKS))
            oflags |= O_NOFOLLOW;
        fd = open(path, oflags, 0664);
    } else {
        /* O_NONBLOCK: opening a FIFO must not hang waiting for a writer. */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    }
    if (fd < 0)
        return MMAPIPC_EOS;
    if (fstat(fd, &st) != 0)
        goto fail_errno;
    ch->file_size = (int64_t)st.st_size;
    ch->dev = (uint64_t)st.st_dev;
    ch->ino = (uint64_t)st.st_ino;
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return MMAPIPC_ENOTREG;
    }
    if (writable) {
        if ((size_t)st.st_size > ch->size && !(flags & MMAPIPC_FORCE)) {
            close(fd);
            return MMAPIPC_ESHRINK;
        }
        if (ftruncate(fd, (off_t)ch->size) != 0)
            goto fail_errno;
        map = mmap(NULL, ch->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    } else {
        if ((size_t)st.st_size < ch->size) {
            close(fd);
            return MMAPIPC_ESHORT;
        }
        map = mmap(NULL, ch->size, PROT_READ, MAP_SHARED, fd, 0);
    }
    if (map == MAP_FAILED)
        goto fail_errno;
    close(fd);
    ch->map = map;
    ch->size_checked_ns = now_ns();
    ch->seen_ns = 0;
    ch->ngaps = 0;
    ch->have = 0;
    ch->verified = 0;
    ch->stuck_valid = 0;
    ch->seq = 0;
    if (writable && ch->seq_off >= 0 && read_writer_seq(ch) != 0) {
        munmap(ch->map, ch->size);
        ch->map = NULL;
        return MMAPIPC_EBUS;
    }
    return 0;

fail_errno:
    saved = errno;
    close(fd);
    errno = saved;
    return MMAPIPC_EOS;
}

int mmapipc_close(struct mmapipc_channel *ch)
{
    void *map = ch->map;
    if (map == NULL)
        return 0;
    ch->map = NULL;
    if (munmap(map, ch->size) != 0)
        return MMAPIPC_EOS;
    return 0;
}

int mmapipc_sync(struct mmapipc_channel *ch)
{
    if (msync(ch->map, ch->size, MS_SYNC) != 0)
        return MMAPIPC_EOS;
    return 0;
}

/* ---- copies ------------------------------------------------------------ */

static inline int has_seqlock(const struct mmapipc_channel *ch)
{
    return ch->seq_off >= 0 && ch->marker_off >= 0;
}

/* The parts of a record outside the lock bytes: at most three [from, to)
 * spans around the marker byte and the two sequence bytes, wherever they are. */
struct spans {
    size_t from[3], to[3];
    int n;
};

static inline void field_spans(const struct mmapipc_channel *ch, struct spans *sp)
{
    size_t m = (size_t)ch->marker_off, s = (size_t)ch->seq_off;
    size_t a0 = m < s ? m : s, a1 = m < s ? m + 1 : s + 2;   /* first hole */
    size_t b0 = m < s ? s : m, b1 = m < s ? s + 2 : m + 1;   /* second hole */
    size_t at = 0;
    sp->n = 0;
    if (a0 > at) {
        sp->from[sp->n] = at;
        sp->to[sp->n++] = a0;
    }
    at = a1;
    if (b0 > at) {
        sp->from[sp->n] = at;
        sp->to[sp->n++] = b0;
    }
    at = b1 > at ? b1 : at;
    if (ch->size > at) {
        sp->from[sp->n] = at;
        sp->to[sp->n++] = ch->size;
    }
}

/* Copy a record, leaving the marker and sequence bytes of dst untouched. */
static inline void copy_fields(const struct mmapipc_channel *ch,
                               unsigned char *dst, const unsigned char *src)
{
    struct spans sp;
    field_spans(ch, &sp);
    for (int i = 0; i < sp.n; i++)
        memcpy(dst + sp.from[i], src + sp.from[i], sp.to[i] - sp.from[i]);
}

static void clear_lock_bytes(const struct mmapipc_channel *ch, unsigned char *rec)
{
    if (has_seqlock(ch)) {
        rec[ch->marker_off] = 0;
        rec[ch->seq_off] = 0;
        rec[ch->seq_off + 1] = 0;
    }
}

/* Is the mapped file still long enough?  Bytes past its end read as zeros
 * without a fault when they share a page with bytes before it, so a copy
 * that changed without the seq lock's word is checked against the size. */
static int check_size(struct mmapipc_channel *ch)
{
    struct stat st;
    if (ch->path == NULL || stat(ch->path, &st) != 0)
        return 0;   /* gone or unreadable: the mapping itself still holds */
    if ((uint64_t)st.st_dev != ch->dev || (uint64_t)st.st_ino != ch->ino)
        return 0;   /* replaced: nothing to say about our file */
    ch->file_size = (int64_t)st.st_size;
    if ((size_t)st.st_size < ch->size)
        return MMAPIPC_ESHORT;
    return 0;
}

/* Through the lock, bytes 0..marker are known to lie inside the file, but a
 * writer may go on storing into the page of a file truncated under it; so
 * changes it makes are checked against the size too, at most this often. */
static int size_check_due(struct mmapipc_channel *ch)
{
    int64_t now = now_ns();
    if (now - ch->size_checked_ns < ch->size_check_ns)
        return 0;
    ch->size_checked_ns = now;
    return 1;
}

int mmapipc_store(struct mmapipc_channel *ch)
{
    struct guard g;
    unsigned char *m = ch->map;

    if (m == NULL) {
        errno = EBADF;
        return MMAPIPC_EOS;
    }
    GUARD_BEGIN(g, m, ch->size);
    if (ch->seqlock && has_seqlock(ch)) {
        _Atomic uint16_t *seq = (_Atomic uint16_t *)(m + ch->seq_off);
        uint16_t s = ch->seq;
        atomic_store_explicit(seq, (uint16_t)(s + 1), memory_order_relaxed);
        m[ch->marker_off] = MMAPIPC_SEQ_MARKER;
        atomic_thread_fence(memory_order_release);
        copy_fields(ch, m, ch->src);
        atomic_thread_fence(memory_order_release);
        atomic_store_explicit(seq, (uint16_t)(s + 2), memory_order_relaxed);
        ch->seq = (uint16_t)(s + 2);
    } else {
        memcpy(m, ch->src, ch->size);
    }
    GUARD_END(g);
    if (size_check_due(ch))
        return check_size(ch);  /* a truncated file would swallow the record */
    return 0;
}

static inline int same_fields(const struct mmapipc_channel *ch,
                              const unsigned char *a, const unsigned char *b)
{
    struct spans sp;
    if (!has_seqlock(ch))
        return memcmp(a, b, ch->size) == 0;
    field_spans(ch, &sp);
    for (int i = 0; i < sp.n; i++)
        if (memcmp(a + sp.from[i], b + sp.from[i], sp.to[i] - sp.from[i]) != 0)
            return 0;
    return 1;
}

/* Copy until two consecutive copies agree (writers without the seq lock). */
static int fetch_agreed(struct mmapipc_channel *ch)
{
    unsigned char *a = ch->scratch, *b = ch->scratch + ch->size;
    const unsigned char *m = ch->map;
    int64_t start = 0;
    memcpy(a, m, ch->size);
    for (unsigned long i = 0;; i++) {
        atomic_signal_fence(memory_order_seq_cst);
        memcpy(b, m, ch->size);
        atomic_signal_fence(memory_order_seq_cst);
        if (memcmp(a, b, ch->size) == 0) {
            ch->fallback_reads++;
            return 0;
        }
        memcpy(a, b, ch->size);
        if ((i & 255) == 255) {
            if (start == 0)
                start = now_ns();
            else if (now_ns() - start > ch->unstable_ns)
                return MMAPIPC_EUNSTABLE;
        }
    }
}

/* Fill ch->scratch with a stable copy of the record (inside a guard). */
static int fetch(struct mmapipc_channel *ch, uint16_t *seq_out, int *agreed)
{
    const unsigned char *m = ch->map;
    int64_t start = 0;

    *agreed = 1;
    if (!has_seqlock(ch) || m[ch->marker_off] != MMAPIPC_SEQ_MARKER)
        return fetch_agreed(ch);
    _Atomic uint16_t *seq = (_Atomic uint16_t *)(m + ch->seq_off);
    for (unsigned long i = 0;; i++) {
        uint16_t s1 = atomic_load_explicit(seq, memory_order_acquire);
        if (s1 & 1) {
            uint32_t pad = ((uint32_t)m[ch->marker_off] << 16) | s1;
            if (ch->stuck_valid && ch->stuck == pad)
                return fetch_agreed(ch);
            if (start == 0)
                start = now_ns();
            int64_t waited = now_ns() - start;
            if (waited > ch->stuck_ns) {
                /* A dead writer, or garbage that looks like our marker:
                 * decide once, and read this value by agreement from now. */
                ch->stuck = pad;
                ch->stuck_valid = 1;
                return fetch_agreed(ch);
            }
            if (waited < 20000)
                cpu_relax();
            else
                sleep_ns(20000);
            continue;
        }
        memcpy(ch->scratch, m, ch->size);
        atomic_thread_fence(memory_order_acquire);
        uint16_t s2 = atomic_load_explicit(seq, memory_order_relaxed);
        if (s1 == s2 && m[ch->marker_off] == MMAPIPC_SEQ_MARKER) {
            ch->stuck_valid = 0;
            if (ch->have && s1 == ch->seq && !same_fields(ch, ch->scratch, ch->copy)) {
                /* The fields changed but the sequence did not: this writer
                 * keeps no seq lock (garbage padding), so confirm by agreement
                 * (and stop trusting the lock now, even if agreement fails). */
                ch->verified = 0;
                return fetch_agreed(ch);
            }
            if (ch->verified == 0)
                ch->verified = 1;       /* this copy came through the lock */
            else if (ch->have && s1 != ch->seq)
                ch->verified = 2;       /* and the sequence moves: a real lock */
            *seq_out = s1;
            *agreed = 0;
            ch->seqlock_reads++;
            return 0;
        }
        if ((i & 255) == 255) {
            if (start == 0)
                start = now_ns();
            else if (now_ns() - start > ch->unstable_ns)
                return MMAPIPC_EUNSTABLE;
        }
    }
}

/* Guarded fetch, then compare with the last copy. */
static int load_guarded(struct mmapipc_channel *ch)
{
    struct guard g;
    uint16_t s = ch->seq;
    int rc, agreed = 1;

    if (ch->map == NULL) {
        errno = EBADF;
        return MMAPIPC_EOS;
    }
    GUARD_BEGIN(g, ch->map, ch->size);
    if (ch->have && ch->verified == 2 && has_seqlock(ch) &&
        ch->map[ch->marker_off] == MMAPIPC_SEQ_MARKER &&
        atomic_load_explicit((_Atomic uint16_t *)(ch->map + ch->seq_off),
                             memory_order_acquire) == ch->seq) {
        GUARD_END(g);
        return 0;   /* a seq lock writer has not written since */
    }
    rc = fetch(ch, &s, &agreed);
    GUARD_END(g);
    if (rc != 0)
        return rc;
    ch->seq = s;
    if (agreed)
        ch->verified = 0;
    else
        clear_lock_bytes(ch, ch->scratch);  /* ours; a legacy writer's stay as they are */
    if (ch->have && same_fields(ch, ch->scratch, ch->copy))
        return 0;
    /* A non-zero last byte read by agreement proves the file still covers the
     * whole record (past its end a page reads as zeros); else, and now and
     * then anyway, ask the file system. */
    int check = (agreed && ch->scratch[ch->size - 1] == 0) || size_check_due(ch);
    if (check && (rc = check_size(ch)) != 0)
        return rc;
    memcpy(ch->copy, ch->scratch, ch->size);
    ch->have = 1;
    return 1;
}

int mmapipc_load(struct mmapipc_channel *ch)
{
    return load_guarded(ch);
}

int mmapipc_load_raw(struct mmapipc_channel *ch)
{
    struct guard g;
    if (ch->map == NULL) {
        errno = EBADF;
        return MMAPIPC_EOS;
    }
    GUARD_BEGIN(g, ch->map, ch->size);
    memcpy(ch->scratch, ch->map, ch->size);
    GUARD_END(g);
    return 0;
}

/* Cheap check: could the record differ from ch->copy?  (inside a guard) */
static inline int maybe_changed(const struct mmapipc_channel *ch)
{
    const unsigned char *m = ch->map;
    if (!ch->have)
        return 1;
    if (has_seqlock(ch) && m[ch->marker_off] == MMAPIPC_SEQ_MARKER) {
        uint16_t s = atomic_load_explicit((_Atomic uint16_t *)(m + ch->seq_off),
                                          memory_order_relaxed);
        if (s == ch->seq && ch->verified == 2)
            return 0;
        if (!(s & 1) && s != ch->seq)
            return 1;   /* a store completed since */
        if (!(s & 1))
            return !same_fields(ch, m, ch->copy);   /* lock not proven: look */
        /* odd: being written, or stuck; a stuck value is read by agreement */
        uint32_t pad = ((uint32_t)m[ch->marker_off] << 16) | s;
        if (!(ch->stuck_valid && ch->stuck == pad))
            return 0;
    }
    return !same_fields(ch, m, ch->copy);
}

static int poll_changed(struct mmapipc_channel *ch)
{
    struct guard g;
    int r;
    GUARD_BEGIN(g, ch->map, ch->size);
    atomic_thread_fence(memory_order_acquire);
    r = maybe_changed(ch);
    GUARD_END(g);
    return r;
}

int mmapipc_poll(struct mmapipc_channel *ch)
{
    if (ch->map == NULL) {
        errno = EBADF;
        return MMAPIPC_EOS;
    }
    return poll_changed(ch);
}

/* The longest single nap: bounds how late an early change of a regular
 * writer can be seen. */
#define NAP_MAX_NS 20000000

/* The period of a regular writer, from the gaps between the last changes
 * seen: their minimum, and in *jitter how far they spread; 0 if they spread
 * more than our own sleeps and a quarter of the period explain (irregular). */
static int64_t writer_period(const struct mmapipc_channel *ch, int64_t *jitter)
{
    int n = ch->ngaps < 8 ? ch->ngaps : 8;
    int64_t lo, hi, tolerance;
    if (n < 4)
        return 0;
    lo = hi = ch->gaps[0];
    for (int i = 1; i < n; i++) {
        if (ch->gaps[i] < lo)
            lo = ch->gaps[i];
        if (ch->gaps[i] > hi)
            hi = ch->gaps[i];
    }
    *jitter = hi - lo;
    tolerance = 2 * ch->sleep_max_ns > lo / 4 ? 2 * ch->sleep_max_ns : lo / 4;
    return hi - lo <= tolerance && hi - lo < lo / 2 ? lo : 0;
}

static void note_change(struct mmapipc_channel *ch, int64_t now)
{
    if (ch->seen_ns > 0)
        ch->gaps[ch->ngaps++ % 8] = now - ch->seen_ns;
    if (ch->ngaps >= 16)
        ch->ngaps = 8 + ch->ngaps % 8;  /* keep the index small, the history full */
    ch->seen_ns = now;
}

/*
 * Wait for a change: spin a little, then sleep, doubling the sleeps up to a
 * ceiling.  Against a writer that changes the record at a regular period
 * (most loops do), nap until just before the next change is due (the
 * shortest gap seen, less their spread), then poll with the shortest sleeps
 * until the change is overdue: one long sleep instead of a doubling series,
 * and the change seen soon after it lands.
 */
int mmapipc_wait(struct mmapipc_channel *ch)
{
    int64_t start = now_ns(), now, sleep = ch->sleep_min_ns, spin = ch->spin_ns;
    int64_t period = 0, jitter = 0, nap_until = 0, overdue = 0;
    int slack = -1, rc;

    if (ch->map == NULL) {
        errno = EBADF;
        return MMAPIPC_EOS;
    }
    if (ch->predict && !ch->busy && ch->seen_ns > 0 &&
        (period = writer_period(ch, &jitter)) > 0) {
        int64_t margin = jitter > period / 16 ? jitter : period / 16;
        nap_until = ch->seen_ns + period - margin;
        overdue = ch->seen_ns + period + margin;
        if (sleep < margin / 2)   /* a few polls across the window it may land in, */
            sleep = margin / 2 < ch->sleep_max_ns ? margin / 2 : ch->sleep_max_ns;
                                  /* never apart by more than the ceiling */
        spin = 0;
    }
    if (ch->resume) {
        spin = 0;
        if (period == 0 || start > overdue)
            sleep = ch->sleep_max_ns;
    }
    for (;;) {
        rc = poll_changed(ch);
        if (rc > 0) {
            rc = load_guarded(ch);
            if (rc == 1)
                note_change(ch, now_ns());
            if (rc != 0)
                break;   /* changed (1) or an error */
        } else if (rc < 0) {
            break;
        }
        now = now_ns();
        if (ch->timeout_ns >= 0 && now - start >= ch->timeout_ns) {
            rc = MMAPIPC_ETIMEDOUT;
            break;
        }
        if (ch->busy || now - start < spin) {
            cpu_relax();
            continue;
        }
        if (slack < 0) {
            /* The default 50 us timer slack would dwarf short sleeps. */
            slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
            if (slack > 1000)
                prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
        }
        int64_t want = sleep;
        if (now < nap_until) {               /* the writer is not due yet: nap, but */
            want = nap_until - now;          /* not so long that an early change */
            if (want > NAP_MAX_NS)           /* would wait for the whole period */
                want = NAP_MAX_NS;
        }
        int64_t left = ch->timeout_ns >= 0 ? ch->timeout_ns - (now - start) : want;
        if (sleep_ns(want < left ? want : left) != 0) {
            rc = MMAPIPC_EINTR;
            break;
        }
        if (now >= overdue && sleep < ch->sleep_max_ns) {  /* overdue >= nap_until */
            sleep *= 2;
            if (sleep > ch->sleep_max_ns)
                sleep = ch->sleep_max_ns;
        }
    }
    if (slack > 1000)
        prctl(PR_SET_TIMERSLACK, (unsigned long)slack, 0, 0, 0);
    return rc;
}
