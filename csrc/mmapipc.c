/*
 * mmapipc C core: the system calls of mmap_w/mmap_r, checked, and guarded
 * copies.  No Python here: every function returns a negative MMAPIPC_E*
 * code on failure and leaves errno set for MMAPIPC_EOS.
 */
#define _GNU_SOURCE
#include "mmapipc.h"
#include "../mmapipc/include/mmapipc_record.h"   /* the wire protocol: one implementation */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

_Static_assert(MMAPIPC_SEQ_MARKER == MMAPIPC_REC_LOCK_MARKER &&
                   MMAPIPC_NOTIFY_MARKER == MMAPIPC_REC_NOTIFY_MARKER &&
                   MMAPIPC_WAITED_MARKER == MMAPIPC_REC_WAITED_MARKER &&
                   MMAPIPC_RELOOK_NS == MMAPIPC_REC_SLICE_NS,
               "mmapipc.h and mmapipc_record.h name the same markers");

/* What a reader knows about the last record it returned. */
enum trust {
    TRUST_NONE,     /* nothing loaded yet */
    TRUST_LOADED,   /* copy holds the last record loaded */
};

#define NGAPS 16

/* A change seen by a wait: when it landed, as the middle of the time between
 * the look before and the look that saw it, and half that time (how far off
 * the estimate may be). */
struct change {
    int64_t at, halfw;
};

/* A regular writer: its period, how far the period may be off, and how far
 * its gaps stray beyond what the estimates of its changes allow. */
struct rhythm {
    int64_t period, uperiod, jitter;
};

struct mmapipc_channel {
    pthread_mutex_t lock;     /* held by every call that touches the mapping */
    unsigned forks;           /* the fork generation the mutex was made in */
    unsigned char *map;       /* NULL when closed */
    int fd;                   /* kept to fstat the mapped file; -1 when closed */
    char *path;               /* absolute path it was opened by (our copy) */
    int flags;
    uint64_t dev, ino;        /* the file it maps */
    struct mmapipc_rec_geom geo; /* size and lock offsets (-1, -1: no lock) */
    unsigned char *copy;      /* reader: the last record loaded */
    unsigned char *scratch;   /* reader: two work copies (2 * size) */
    enum trust have;
    struct mmapipc_rec_rstate rs; /* reader: sequence of copy, a stuck lock */
    int64_t stuck_ns, unstable_ns, check_ns, checked_at;
    int short_file;           /* the last check found the file too short */
    struct mmapipc_wait_params wp;
    int64_t last_poll;        /* wait: when the record was last looked at */
    int noted;                /* wait: a look noted a change that no load took yet */
    int notified;             /* wait: the last look found a notifying writer */
    int64_t readied;          /* wait: the end of the window MMAPIPC_DUE was given for */
    struct mmapipc_rec_rw rw; /* wait: the futex word, writable, to say a waiter is there */
    struct change changes[NGAPS]; /* wait: the last changes seen */
    struct rhythm rhythm;     /* wait: the writer's, as the changes seen say */
    int regular;              /* wait: rhythm holds (a regular writer) */
    int64_t aim;              /* wait: where a regular writer's next change is looked for first */
    int aim_hits;             /* wait: changes in a row found by the look at the aim */
    int aimed;                /* wait: the look under way is the one at the aim */
    int64_t win_lo, win_hi;   /* wait: the window the next look belongs to (0, 0: none) */
    int in_step;              /* wait: changes found in their windows lately (-4..4) */
    int64_t planned;          /* wait: when the timed sleep under way should end (0: none) */
    int64_t lateness;         /* wait: how late timed sleeps end, typically */
    int nchanges;
    struct mmapipc_stats st;
};

/* ---- SIGBUS guard ------------------------------------------------------ */

struct guard {
    sigjmp_buf env;
    const char *lo, *hi;       /* the mapping being copied */
    volatile sig_atomic_t active;
};

static __thread struct guard *tls_guard __attribute__((tls_model("initial-exec")));
static struct sigaction previous;      /* the handler that was there before */
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int guard_users;         /* guarded copies in progress */
static atomic_int guard_paused;        /* new ones wait while set */
static atomic_uint fork_generation;    /* forks this process has been the child of */

/* In a child of fork(), only the forking thread exists: what other threads
 * held (a channel's mutex, the install lock, guarded copies) is let go. */
static void after_fork_child(void)
{
    pthread_mutex_init(&install_lock, NULL);
    atomic_store(&guard_users, 0);
    atomic_store(&guard_paused, 0);
    atomic_fetch_add(&fork_generation, 1);
}

static void at_fork_once(void)
{
    pthread_atfork(NULL, NULL, after_fork_child);
}

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
    struct guard *g = tls_guard;
    /* Ours only if the kernel reports a fault (si_code > 0: BUS_ADRERR...)
     * at an address inside the mapping this thread is copying.  A SIGBUS
     * sent with kill() or tgkill() (si_code <= 0) is someone else's. */
    if (g != NULL && g->active && info != NULL && info->si_code > 0) {
        const char *addr = (const char *)info->si_addr;
        if (addr >= g->lo && addr < g->hi) {
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

static int install_locked(void)
{
    struct sigaction cur, ours;
    if (sigaction(SIGBUS, NULL, &cur) != 0)
        return MMAPIPC_EOS;
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigbus)
        return 0;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = on_sigbus;
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&ours.sa_mask);
    previous = cur;
    return sigaction(SIGBUS, &ours, NULL) == 0 ? 0 : MMAPIPC_EOS;
}

int mmapipc_guard_install(void)
{
    pthread_mutex_lock(&install_lock);
    int rc = install_locked();
    pthread_mutex_unlock(&install_lock);
    return rc;
}

void mmapipc_guard_pause(void)
{
    pthread_mutex_lock(&install_lock);
    atomic_store(&guard_paused, 1);
    while (atomic_load(&guard_users) > 0)
        sched_yield();
}

int mmapipc_guard_resume(void)
{
    int rc = install_locked();
    atomic_store(&guard_paused, 0);
    pthread_mutex_unlock(&install_lock);
    return rc;
}

/* Before a guarded copy: count it, or wait while the handler chain changes. */
static void guard_prepare(struct guard *g, const unsigned char *base, size_t len)
{
    for (;;) {
        atomic_fetch_add(&guard_users, 1);
        if (!atomic_load(&guard_paused))
            break;
        atomic_fetch_sub(&guard_users, 1);
        while (atomic_load(&guard_paused))
            sched_yield();
    }
    g->lo = (const char *)base;
    g->hi = g->lo + len;
    g->active = 0;
    tls_guard = g;
}

/* Between a successful sigsetjmp and the copy. */
static inline void guard_arm(struct guard *g)
{
    atomic_signal_fence(memory_order_seq_cst);
    g->active = 1;
    atomic_signal_fence(memory_order_seq_cst);
}

static inline void guard_end(struct guard *g)
{
    atomic_signal_fence(memory_order_seq_cst);
    g->active = 0;
    tls_guard = NULL;
    atomic_signal_fence(memory_order_seq_cst);
    atomic_fetch_sub(&guard_users, 1);
}

/* After the jump: SIGBUS is still blocked (sigsetjmp did not save the mask,
 * to keep the fast path free of system calls), so unblock it. */
static int guard_fault(struct guard *g)
{
    sigset_t set;
    guard_end(g);
    sigemptyset(&set);
    sigaddset(&set, SIGBUS);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    return MMAPIPC_EBUS;
}

/* ---- time -------------------------------------------------------------- */

#define now_ns mmapipc_rec__now_ns
#define cpu_relax mmapipc_rec__relax

/* While this thread's wait holds signals (MMAPIPC_WAIT_SIGNALS): the mask to
 * sleep with, the thread's own, so that a signal held since the last sleep
 * ends the next one at once; NULL otherwise. */
static __thread const sigset_t *sleep_mask;

/* Sleep until the monotonic time t; -1 (errno EINTR) if a signal cut it short. */
static int sleep_until(int64_t t)
{
    if (sleep_mask != NULL) {   /* signals let in only for the sleep, atomically */
        int64_t left = t - now_ns();
        struct timespec rel = {0, 0};
        if (left > 0)
            rel = (struct timespec){(time_t)(left / 1000000000), (long)(left % 1000000000)};
        return ppoll(NULL, 0, &rel, sleep_mask) < 0 && errno == EINTR ? -1 : 0;
    }
    struct timespec ts = {(time_t)(t / 1000000000), (long)(t % 1000000000)};
    int rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    return 0;
}

/* Short sleeps need a fine timer: the default 50 us slack would dwarf them.
 * Lowered once per waiting thread and left so (it concerns that thread only). */
static void fine_timer(void)
{
    static __thread int done;
    if (!done) {
        done = 1;
        if (prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0) > 1000)
            prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    }
}

/* ---- channels ---------------------------------------------------------- */

/* A channel used in a child of fork() for the first time: its mutex may be
 * held by a thread that is not there; then make it anew, and forget the
 * record (it may have been half copied).  Free at the fork, all it guards was
 * whole: keep the record, so that a wait waits for a change of it. */
static void after_fork(mmapipc_channel *ch)
{
    unsigned now = atomic_load(&fork_generation);
    if (ch->forks != now) {
        if (pthread_mutex_trylock(&ch->lock) == 0) {
            pthread_mutex_unlock(&ch->lock);
        } else {
            pthread_mutex_init(&ch->lock, NULL);
            ch->have = TRUST_NONE;
        }
        ch->forks = now;
    }
}

static void lock_channel(mmapipc_channel *ch)
{
    after_fork(ch);
    pthread_mutex_lock(&ch->lock);
}

mmapipc_channel *mmapipc_new(size_t size, int marker_off, int seq_off)
{
    mmapipc_channel *ch;
    struct mmapipc_rec_geom geo = {size, marker_off, seq_off};
    if (!mmapipc_rec__geom_ok(&geo)) {
        errno = EINVAL;
        return NULL;
    }
    ch = calloc(1, sizeof *ch);
    if (ch == NULL)
        return NULL;
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, at_fork_once);
    pthread_mutex_init(&ch->lock, NULL);
    ch->forks = atomic_load(&fork_generation);
    ch->fd = -1;
    ch->geo = geo;
    ch->stuck_ns = 250000000;
    ch->unstable_ns = 1000000000;
    ch->check_ns = 10000000;
    ch->wp = (struct mmapipc_wait_params){1000000, 10000000, 200000000, 1, 0};
    ch->st.file_size = -1;
    return ch;
}

int mmapipc_set_limits(mmapipc_channel *ch, int64_t stuck, int64_t unstable,
                       int64_t file_check)
{
    lock_channel(ch);
    ch->stuck_ns = stuck;
    ch->unstable_ns = unstable;
    ch->check_ns = file_check;
    pthread_mutex_unlock(&ch->lock);
    return 0;
}

int mmapipc_set_wait(mmapipc_channel *ch, const struct mmapipc_wait_params *p)
{
    if (p->max_gap <= 0 || p->idle_gap < p->max_gap || p->idle_after < 0) {
        errno = EINVAL;
        return MMAPIPC_EOS;
    }
    lock_channel(ch);
    ch->wp = *p;
    pthread_mutex_unlock(&ch->lock);
    return 0;
}

int mmapipc_get_stats(mmapipc_channel *ch, struct mmapipc_stats *out)
{
    lock_channel(ch);
    *out = ch->st;
    pthread_mutex_unlock(&ch->lock);
    return 0;
}

/* The protocol's primitives (mmapipc_record.h) on this channel's geometry. */
static inline int has_seqlock(const mmapipc_channel *ch)
{
    return mmapipc_rec__has_lock(&ch->geo);
}

static inline _Atomic uint16_t *seq_word(const mmapipc_channel *ch, const unsigned char *m)
{
    return mmapipc_rec__seq_word(&ch->geo, m);
}

static inline int marked(const mmapipc_channel *ch, const unsigned char *m)
{
    return mmapipc_rec__marked(&ch->geo, m);
}

static inline int can_notify(const mmapipc_channel *ch)
{
    return mmapipc_rec__can_notify(&ch->geo);
}

static inline _Atomic uint32_t *futex_word(const mmapipc_channel *ch, const unsigned char *m)
{
    return mmapipc_rec__futex_word(&ch->geo, m);
}

#define futex_wake mmapipc_rec__futex_wake
#define futex_sleep mmapipc_rec__futex_sleep

/* Forget what was loaded (a new file, or a new mapping of it). */
static void reset_reader(mmapipc_channel *ch)
{
    ch->have = TRUST_NONE;
    ch->rs.stuck_valid = 0;
    ch->nchanges = 0;
    ch->aim = ch->win_lo = ch->win_hi = 0;
    ch->in_step = ch->aim_hits = ch->aimed = ch->regular = 0;
    ch->planned = ch->lateness = ch->readied = 0;
    ch->noted = 0;
}

/* ---- open and close ---------------------------------------------------- */

/* ---- the writer's path rules ------------------------------------------- */

/* Walked component by component with openat, as the kernel would resolve the
 * path, so that what is checked is what is opened: a symlink in a sticky
 * world-writable directory that belongs to neither the caller nor the
 * directory's owner is not followed (protected_symlinks), whatever the
 * sysctls say; the opened file's owner is checked on its descriptor. */

#define MAX_LINKS 40

struct walk {
    char rest[2 * PATH_MAX];  /* what is left of the path to resolve */
    int dirfd;                /* the directory reached so far */
    int links;
};

static int sticky_open_to_all(int dirfd, uid_t *owner)
{
    struct stat d;
    if (fstat(dirfd, &d) != 0)
        return 0;
    *owner = d.st_uid;
    return (d.st_mode & S_ISVTX) && (d.st_mode & S_IWOTH);
}

/* Someone else's file or link in a sticky world-writable directory? */
static int foreign(int dirfd, uid_t uid)
{
    uid_t dir_owner;
    return uid != geteuid() && sticky_open_to_all(dirfd, &dir_owner) && uid != dir_owner;
}

/* Move the next component of w->rest into name: 1 if it is the last, 0 if
 * not, -1 (errno set) if there is none or it is too long. */
static int next_component(struct walk *w, char *name, size_t cap)
{
    const char *p = w->rest, *end;
    size_t n;
    while (*p == '/')
        p++;
    end = p + strcspn(p, "/");
    n = (size_t)(end - p);
    if (n == 0 || n >= cap) {
        errno = n == 0 ? ENOENT : ENAMETOOLONG;
        return -1;
    }
    memcpy(name, p, n);
    name[n] = '\0';
    memmove(w->rest, end, strlen(end) + 1);
    if (w->rest[0] != '\0' && w->rest[strspn(w->rest, "/")] == '\0') {
        errno = EISDIR;   /* a trailing slash: the writer's file cannot be a directory */
        return -1;
    }
    return w->rest[0] == '\0';
}

/* Go on from the target of the symlink open at fd (O_PATH|O_NOFOLLOW). */
static int expand_link(struct walk *w, int fd)
{
    char target[PATH_MAX];
    ssize_t n = readlinkat(fd, "", target, sizeof target - 1);
    size_t rest = strlen(w->rest);
    if (n < 0)
        return MMAPIPC_EOS;
    if (++w->links > MAX_LINKS || (size_t)n + rest + 2 > sizeof w->rest) {
        errno = w->links > MAX_LINKS ? ELOOP : ENAMETOOLONG;
        return MMAPIPC_EOS;
    }
    memmove(w->rest + n + (rest > 0), w->rest, rest + 1);
    memcpy(w->rest, target, (size_t)n);
    if (rest > 0)
        w->rest[n] = '/';
    if (target[0] == '/') {
        int root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (root < 0)
            return MMAPIPC_EOS;
        close(w->dirfd);
        w->dirfd = root;
    }
    return 0;
}

/* Resolve a symlink component, unless it was planted. */
static int through_link(struct walk *w, const char *name)
{
    struct stat st;
    int rc, fd = openat(w->dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return MMAPIPC_EOS;
    if (fstat(fd, &st) != 0)
        rc = MMAPIPC_EOS;
    else if (S_ISLNK(st.st_mode) && foreign(w->dirfd, st.st_uid))
        rc = MMAPIPC_EPLANTED;
    else
        rc = S_ISLNK(st.st_mode) ? expand_link(w, fd) : (errno = EAGAIN, MMAPIPC_EOS);
    close(fd);
    return rc;
}

/* Walk every component but the last (into name), following symlinks by the
 * rules; the last one too when it is a symlink and follow_last. */
static int walk_to_last(struct walk *w, char *name, size_t cap, int follow_last)
{
    struct stat st;
    for (;;) {
        int last = next_component(w, name, cap), fd, rc;
        if (last < 0)
            return MMAPIPC_EOS;
        if (fstatat(w->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
            return last && errno == ENOENT ? 0 : MMAPIPC_EOS;
        if (S_ISLNK(st.st_mode) && (!last || follow_last)) {
            if ((rc = through_link(w, name)) != 0)
                return rc;
            continue;
        }
        if (last)
            return 0;
        /* O_NOFOLLOW: a directory swapped for a link since fstatat fails here */
        fd = openat(w->dirfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            return MMAPIPC_EOS;
        close(w->dirfd);
        w->dirfd = fd;
    }
}

/* Open the writer's file by the rules; *fd_out on success. */
static int open_writer(const char *path, int flags, int *fd_out)
{
    struct walk w;
    struct stat st;
    char name[NAME_MAX + 1];
    int rc, fd = -1, saved;
    if (strlen(path) >= sizeof w.rest) {
        errno = ENAMETOOLONG;
        return MMAPIPC_EOS;
    }
    strcpy(w.rest, path);
    w.links = 0;
    w.dirfd = open(path[0] == '/' ? "/" : ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (w.dirfd < 0)
        return MMAPIPC_EOS;
    rc = walk_to_last(&w, name, sizeof name, (flags & MMAPIPC_FOLLOW_SYMLINKS) != 0);
    if (rc == 0)
        fd = openat(w.dirfd, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0664);
    if (rc == 0 && fd < 0)
        rc = MMAPIPC_EOS;
    if (rc == 0 && !(flags & MMAPIPC_FORCE) && fstat(fd, &st) == 0 && foreign(w.dirfd, st.st_uid))
        rc = MMAPIPC_EFOREIGN;
    saved = errno;
    if (rc != 0 && fd >= 0)
        close(fd);
    close(w.dirfd);
    errno = saved;
    *fd_out = fd;
    return rc;
}

static int open_fd(const char *path, int flags, int *fd)
{
    if (flags & MMAPIPC_WRITE)
        return open_writer(path, flags, fd);
    /* O_NONBLOCK: opening a FIFO must not hang waiting for a writer. */
    *fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    return *fd < 0 ? MMAPIPC_EOS : 0;
}

/* What the writer or reader refuses, from the opened file's status. */
static int refuse(const mmapipc_channel *ch, const struct stat *st, int flags)
{
    if (!S_ISREG(st->st_mode))
        return MMAPIPC_ENOTREG;
    if (!(flags & MMAPIPC_WRITE))
        return (size_t)st->st_size < ch->geo.size ? MMAPIPC_ESHORT : 0;
    if (flags & MMAPIPC_FORCE)
        return 0;
    if (st->st_nlink > 1)
        return MMAPIPC_ELINKS;
    return (size_t)st->st_size > ch->geo.size ? MMAPIPC_ESHRINK : 0;
}

/* Open and map path into fresh state; on failure nothing is left open. */
static int map_file(mmapipc_channel *ch, const char *path, int flags,
                    unsigned char **map, int *fd_out, struct stat *st)
{
    int writable = (flags & MMAPIPC_WRITE) != 0, rc, saved, fd;
    void *m;
    if ((rc = open_fd(path, flags, &fd)) != 0)
        return rc;
    if (fstat(fd, st) != 0)
        goto fail_errno;
    ch->st.file_size = (int64_t)st->st_size;
    if ((rc = refuse(ch, st, flags)) != 0) {
        close(fd);
        return rc;
    }
    if (writable && ftruncate(fd, (off_t)ch->geo.size) != 0)
        goto fail_errno;
    m = mmap(NULL, ch->geo.size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        goto fail_errno;
    *map = m;
    *fd_out = fd;
    return 0;

fail_errno:
    saved = errno;
    close(fd);
    errno = saved;
    return MMAPIPC_EOS;
}

/* A reader's copies (the last record, and two to work in); a writer has none. */
static int reader_buffers(mmapipc_channel *ch, int flags)
{
    if ((flags & MMAPIPC_WRITE) || ch->copy != NULL)
        return 0;
    ch->copy = malloc(3 * ch->geo.size);
    if (ch->copy == NULL)
        return MMAPIPC_EOS;
    ch->scratch = ch->copy + ch->geo.size;
    return 0;
}

int mmapipc_open(mmapipc_channel *ch, const char *path, int flags)
{
    struct stat st;
    unsigned char *map;
    int fd, rc;
    char *copy = strdup(path);
    if (copy == NULL)
        return MMAPIPC_EOS;
    lock_channel(ch);
    rc = ch->map != NULL ? (errno = EBUSY, MMAPIPC_EOS)
                         : reader_buffers(ch, flags);
    if (rc == 0)
        rc = map_file(ch, path, flags, &map, &fd, &st);
    if (rc == 0) {
        free(ch->path);
        ch->path = copy;
        ch->flags = flags;
        ch->map = map;
        ch->fd = fd;
        ch->dev = (uint64_t)st.st_dev;
        ch->ino = (uint64_t)st.st_ino;
        ch->checked_at = now_ns();
        reset_reader(ch);
    } else {
        free(copy);
    }
    pthread_mutex_unlock(&ch->lock);
    return rc;
}

static int unmap_locked(mmapipc_channel *ch)
{
    int rc = 0;
    if (ch->map != NULL && munmap(ch->map, ch->geo.size) != 0)
        rc = MMAPIPC_EOS;
    mmapipc_rec__rw_unmap(&ch->rw);
    if (ch->fd >= 0)
        close(ch->fd);
    ch->map = NULL;
    ch->fd = -1;
    return rc;
}

int mmapipc_close(mmapipc_channel *ch)
{
    lock_channel(ch);
    int rc = unmap_locked(ch);
    pthread_mutex_unlock(&ch->lock);
    return rc;
}

void mmapipc_free(mmapipc_channel *ch)
{
    if (ch == NULL)
        return;
    mmapipc_close(ch);
    pthread_mutex_destroy(&ch->lock);
    free(ch->path);
    free(ch->copy);
    free(ch);
}

/* Take the channel's mutex; EBADF (unlocked again) if it is closed. */
static int enter(mmapipc_channel *ch)
{
    lock_channel(ch);
    if (ch->map != NULL)
        return 0;
    pthread_mutex_unlock(&ch->lock);
    errno = EBADF;
    return MMAPIPC_EOS;
}

/* enter() for the calls that compare with the last record: a reader's (EBADF
 * on a writer's channel, as read() on a descriptor open for writing only). */
static int enter_reader(mmapipc_channel *ch)
{
    int rc = enter(ch);
    if (rc == 0 && ch->copy == NULL) {
        pthread_mutex_unlock(&ch->lock);
        errno = EBADF;
        return MMAPIPC_EOS;
    }
    return rc;
}

static int leave(mmapipc_channel *ch, int rc)
{
    pthread_mutex_unlock(&ch->lock);
    return rc;
}

int mmapipc_sync(mmapipc_channel *ch)
{
    int rc = enter(ch);
    if (rc != 0)
        return rc;
    return leave(ch, msync(ch->map, ch->geo.size, MS_SYNC) == 0 ? 0 : MMAPIPC_EOS);
}

/* ---- the file under the mapping ---------------------------------------- */

/* A reader whose path names a new regular file, long enough: map that one. */
static int follow_path(mmapipc_channel *ch)
{
    struct stat st;
    unsigned char *map;
    int fd, flags = ch->flags & ~MMAPIPC_WRITE;
    if (map_file(ch, ch->path, flags, &map, &fd, &st) != 0)
        return 0;   /* not (yet) a record: keep the old one */
    unmap_locked(ch);
    ch->map = map;
    ch->fd = fd;
    ch->dev = (uint64_t)st.st_dev;
    ch->ino = (uint64_t)st.st_ino;
    reset_reader(ch);
    ch->st.reopened++;
    return 0;
}

/* Is the mapped file still long enough, and does the path still name it?
 * Bytes past the end of a file read as zeros without a fault when they share
 * a page with bytes before it, so the size is asked of the file itself. */
/* Is the mapped file (its descriptor, whatever the path names) long enough? */
static int check_size(mmapipc_channel *ch)
{
    struct stat st;
    if (fstat(ch->fd, &st) != 0)
        return MMAPIPC_EOS;
    ch->st.file_size = (int64_t)st.st_size;
    ch->short_file = (size_t)st.st_size < ch->geo.size;
    return ch->short_file ? MMAPIPC_ESHORT : 0;
}

static int check_file(mmapipc_channel *ch, int64_t now)
{
    struct stat pst;
    int writer = (ch->flags & MMAPIPC_WRITE) != 0, follow = (ch->flags & MMAPIPC_FOLLOW) != 0;
    int named = stat(ch->path, &pst) == 0;
    int gone = !named && errno != EACCES && errno != EPERM;   /* else: cannot tell */
    int same = named ? (uint64_t)pst.st_dev == ch->dev && (uint64_t)pst.st_ino == ch->ino : !gone;
    ch->checked_at = now;
    if (!same && named && follow && !writer)
        return follow_path(ch);
    if (!same && !(follow && !writer))
        return MMAPIPC_EREPLACED;
    return check_size(ch);
}

/* Check the file at most every `every` ns: check_ns for reads and writes;
 * WAIT_CHECKS times that for a wait's looks, which see a truncation as a
 * change of the fields anyway (zeros past the end, or a fault). */
static int check_file_every(mmapipc_channel *ch, int64_t every)
{
    int64_t now = now_ns();
    /* once found short, every call asks until the file is long enough again */
    return ch->short_file || now - ch->checked_at >= every ? check_file(ch, now) : 0;
}

static int check_file_if_due(mmapipc_channel *ch)
{
    return check_file_every(ch, ch->check_ns);
}

#define WAIT_CHECKS 5

/* ---- stores ------------------------------------------------------------ */

static inline int same_fields(const mmapipc_channel *ch, const unsigned char *a,
                              const unsigned char *b)
{
    return mmapipc_rec__same_fields(&ch->geo, a, b);
}

static inline int notifies(const mmapipc_channel *ch)
{
    return (ch->flags & MMAPIPC_NOTIFY) && can_notify(ch);
}

/* The store itself: the sequence goes odd, the fields are copied, it goes
 * even again.  It carries on from the sequence in the file, so that writers
 * that take turns (or a writer that died mid-store) keep it moving.  1 when
 * a waiter is to be woken. */
static int store_guarded(mmapipc_channel *ch, const unsigned char *rec)
{
    struct guard g;
    unsigned char *m = ch->map;
    int wake;
    guard_prepare(&g, m, ch->geo.size);
    if (sigsetjmp(g.env, 0) != 0)
        return guard_fault(&g);
    guard_arm(&g);
    wake = mmapipc_rec__store_body(&ch->geo, m, rec, notifies(ch), ch->stuck_ns);
    guard_end(&g);
    return wake;
}

int mmapipc_store(mmapipc_channel *ch, const char *rec)
{
    int rc = enter(ch);
    if (rc != 0)
        return rc;
    rc = store_guarded(ch, (const unsigned char *)rec);
    if (rc > 0) {   /* a waiter sleeps; a truncated file: EFAULT here, not SIGBUS */
        futex_wake(futex_word(ch, ch->map));
        rc = 0;
    }
    if (rc == 0)   /* a truncated file would swallow the record: say so */
        rc = check_file_if_due(ch);
    return leave(ch, rc);
}

/* ---- loads ------------------------------------------------------------- */


/* Fill dst with a copy that can be trusted (inside a guard): 1 through the
 * lock, 0 by agreement of two copies, MMAPIPC_EUNSTABLE. */
static int fetch(mmapipc_channel *ch, unsigned char *dst)
{
    unsigned char *second = dst == ch->scratch ? ch->scratch + ch->geo.size : ch->scratch;
    int rc = mmapipc_rec__fetch(&ch->geo, ch->map, &ch->rs, dst, second, ch->stuck_ns,
                                ch->unstable_ns);
    if (rc < 0)
        return MMAPIPC_EUNSTABLE;
    if (rc == 1)
        ch->st.seqlock_reads++;
    else
        ch->st.fallback_reads++;
    return rc;
}

/* 1 if the fields in the mapping differ from the last record (inside a guard). */
static inline int fields_moved(const mmapipc_channel *ch)
{
    return ch->have == TRUST_NONE || !same_fields(ch, ch->map, ch->copy);
}

/* Guarded: look, and if the fields moved, fetch a trusted copy into scratch.
 * Returns 0 unchanged, 1 fetched through the lock, 2 fetched by agreement. */
static int look_and_fetch(mmapipc_channel *ch)
{
    struct guard g;
    int rc = 0;
    guard_prepare(&g, ch->map, ch->geo.size);
    if (sigsetjmp(g.env, 0) != 0)
        return guard_fault(&g);
    guard_arm(&g);
    if (fields_moved(ch)) {
        rc = fetch(ch, ch->scratch);
        rc = rc < 0 ? rc : rc + (rc == 0 ? 2 : 0);
    }
    guard_end(&g);
    return rc;
}

static void took_change(mmapipc_channel *ch);

static int load_locked(mmapipc_channel *ch, char *out)
{
    int covered, rc = check_file_if_due(ch);
    if (rc != 0)
        return rc;
    rc = look_and_fetch(ch);
    if (rc <= 0)
        return rc;
    /* A non-zero last byte proves the file still covers the whole record (past
     * its end a page reads as zeros); else ask the file (once it changed). */
    covered = ch->scratch[ch->geo.size - 1] != 0;
    mmapipc_rec__clear_lock(&ch->geo, ch->scratch);   /* our lock bytes are not the record's */
    if (ch->have != TRUST_NONE && same_fields(ch, ch->scratch, ch->copy))
        return 0;
    if (!covered && (rc = check_size(ch)) != 0)
        return rc;
    if (ch->have != TRUST_NONE && ch->last_poll > 0)   /* a Reader that waits */
        took_change(ch);
    memcpy(ch->copy, ch->scratch, ch->geo.size);
    ch->have = TRUST_LOADED;
    memcpy(out, ch->copy, ch->geo.size);
    return 1;
}

int mmapipc_forget(mmapipc_channel *ch)
{
    lock_channel(ch);
    ch->have = TRUST_NONE;
    pthread_mutex_unlock(&ch->lock);
    return 0;
}

int mmapipc_load(mmapipc_channel *ch, char *out)
{
    int rc = enter_reader(ch);
    if (rc != 0)
        return rc;
    return leave(ch, load_locked(ch, out));
}

static int raw_guarded(mmapipc_channel *ch, unsigned char *out)
{
    struct guard g;
    guard_prepare(&g, ch->map, ch->geo.size);
    if (sigsetjmp(g.env, 0) != 0)
        return guard_fault(&g);
    guard_arm(&g);
    memcpy(out, ch->map, ch->geo.size);
    guard_end(&g);
    return 0;
}

int mmapipc_load_raw(mmapipc_channel *ch, char *out)
{
    int rc = enter(ch);
    if (rc != 0)
        return rc;
    return leave(ch, raw_guarded(ch, (unsigned char *)out));
}

/* Guarded: do the fields differ from the last record?  *word gets the futex
 * word as it was before the comparison when the writer notifies, so that a
 * sleep on it ends at once if a store came in between (else *notify = 0). */
static int moved_guarded(mmapipc_channel *ch, uint32_t *word, int *notify)
{
    struct guard g;
    const unsigned char *m = ch->map;
    int rc;
    guard_prepare(&g, m, ch->geo.size);
    if (sigsetjmp(g.env, 0) != 0)
        return guard_fault(&g);
    guard_arm(&g);
    *notify = can_notify(ch) && mmapipc_rec__notifying(&ch->geo, m);
    if (*notify)
        *word = atomic_load_explicit(futex_word(ch, m), memory_order_acquire);
    atomic_thread_fence(memory_order_acquire);
    rc = fields_moved(ch);
    guard_end(&g);
    return rc;
}

static int poll_locked(mmapipc_channel *ch, int64_t every, uint32_t *word, int *notify)
{
    uint64_t reopened = ch->st.reopened;
    int rc = check_file_every(ch, every);
    *notify = 0;
    if (rc != 0)
        return rc;
    return ch->st.reopened != reopened ? 1 : moved_guarded(ch, word, notify);
}

int mmapipc_poll(mmapipc_channel *ch)
{
    int rc = enter_reader(ch);
    if (rc != 0)
        return rc;
    uint32_t word;
    int notify;
    return leave(ch, poll_locked(ch, ch->check_ns, &word, &notify));
}

/* ---- waiting ----------------------------------------------------------- */

/* How closely to look where a regular writer's change is due. */
#define FINE_NS 50000

/* A writer slower than this gets its looks planned earlier by the lateness of
 * wake-ups, for the least latency: the extra looks that costs (a look that
 * lands before the change, then one more) are nothing at its pace.  A faster
 * writer's looks stay as planned: they land a little after the change, one
 * look a change, which is what its CPU needs. */
#define SLOW_NS 10000000

/* A writer that sleeps between its stores strays from its period by at least
 * this fraction of it (mmap_w's sleep(1): 0.1-0.2 ms here), whatever the
 * closest estimates say. */
#define STRAY 2000

/* The period: the median of the gaps seen closely (both ends found by close
 * looks), which a writer that sleeps after each store keeps although its
 * changes wander and a late one moves all the later ones; else the time
 * between the two changes that pin it down best.  How far off it may be:
 * from those two changes. */
static void best_period(const struct change *c, int n, struct rhythm *r)
{
    int64_t best = INT64_MAX, close[NGAPS];
    int m = 0;
    for (int i = 0; i < n - 1; i++)
        for (int j = i + 1; j < n; j++) {
            int64_t u = (c[i].halfw + c[j].halfw) / (j - i);
            if (u < best) {
                best = u;
                r->period = (c[j].at - c[i].at) / (j - i);
                r->uperiod = u;
            }
        }
    for (int i = 1; i < n; i++)
        if (c[i].halfw + c[i - 1].halfw <= 4 * FINE_NS)
            close[m++] = c[i].at - c[i - 1].at;
    for (int i = 1; i < m; i++)   /* insertion sort: m < NGAPS */
        for (int j = i; j > 0 && close[j - 1] > close[j]; j--) {
            int64_t t = close[j];
            close[j] = close[j - 1];
            close[j - 1] = t;
        }
    if (m > 0)
        r->period = close[(m - 1) / 2];
}

/* Is the writer regular?  From three changes on: each gap, less what the
 * estimates of its two ends allow, strays at most a quarter of the period.
 * (Changes seen only by looks far apart cannot tell: whether looking where
 * the changes are due works is kept by score_window, in in_step.) */
static int writer_rhythm(const mmapipc_channel *ch, struct rhythm *r)
{
    const struct change *c = ch->changes;
    int n = ch->nchanges;
    if (n < 3)
        return 0;
    best_period(c, n, r);
    r->jitter = 0;
    for (int i = 1; i < n; i++) {
        int64_t off = c[i].at - c[i - 1].at - r->period;
        off = (off < 0 ? -off : off) - c[i].halfw - c[i - 1].halfw;
        r->jitter = off > r->jitter ? off : r->jitter;
    }
    return r->period > 0 && r->jitter <= r->period / 4 && r->uperiod <= r->period / 4;
}

/* A change was seen at now: it landed between the look before and this one. */
static void note_change(mmapipc_channel *ch, int64_t now)
{
    int64_t since = ch->last_poll > 0 && ch->last_poll < now ? now - ch->last_poll
                                                              : ch->wp.idle_gap;
    if (ch->nchanges == NGAPS) {
        memmove(ch->changes, ch->changes + 1, (NGAPS - 1) * sizeof ch->changes[0]);
        ch->nchanges--;
    }
    ch->changes[ch->nchanges++] = (struct change){now - since / 2, since / 2 + 1};
    ch->regular = ch->wp.predict && !ch->wp.busy && writer_rhythm(ch, &ch->rhythm);
}

/* A load took a new record: a change, to be noted unless the look that found
 * it did (a change taken by a load alone, a read between waits, must count
 * in the rhythm too, or its gap would read as a writer twice as slow). */
static void took_change(mmapipc_channel *ch)
{
    if (ch->noted) {
        ch->noted = 0;
    } else {
        int64_t now = now_ns();
        note_change(ch, now);
        ch->last_poll = now;
    }
}

/* Where to look first for a fast regular writer's next change.  When the
 * look there found it, the change came earlier than that, by an unknown
 * amount: aim earlier next time, by twice as much after each such hit in a
 * row.  Else aim just before where this look found it, a period on.  So the
 * first look lands just after the change most of the time, and one look a
 * change is the rule.  A slow writer's whole window is looked at instead:
 * looks are cheap at its pace. */
static void aim_next(mmapipc_channel *ch, int64_t now)
{
    const struct rhythm *r = &ch->rhythm;
    if (!ch->regular || r->period >= SLOW_NS) {
        ch->aim = 0;
        ch->aim_hits = 0;
    } else if (ch->aimed) {
        ch->aim += r->period - ((int64_t)FINE_NS / 16 << ch->aim_hits);
        ch->aim_hits += ch->aim_hits < 6;
    } else {
        ch->aim = now + r->period - FINE_NS / 4;
        ch->aim_hits = 0;
    }
}

/* The gap in force: max_gap while the writer changed the record within
 * idle_after, idle_gap after a longer silence. */
static int64_t gap_in_force(const mmapipc_channel *ch, int64_t now)
{
    int64_t last = ch->nchanges ? ch->changes[ch->nchanges - 1].at : 0;
    return last > 0 && now - last < ch->wp.idle_after ? ch->wp.max_gap : ch->wp.idle_gap;
}

/* Room left before the bound for a wake-up that comes late: an eighth of the
 * gap, at most half a millisecond. */
static inline int64_t allowance(int64_t gap)
{
    return gap / 8 < 500000 ? gap / 8 : 500000;
}

/* The window [*lo, *hi] in which a regular writer's k-th change after the
 * last one seen is due: carried forward from the change that makes it
 * narrowest, widened by the writer's jitter.  A change older than the last
 * one is carried as far off as the jitter of each gap since: a writer that
 * sleeps after each store moves all later changes with a late one. */
static void due_window(const mmapipc_channel *ch, const struct rhythm *r, int64_t k,
                       int64_t *lo, int64_t *hi)
{
    const struct change *c = ch->changes;
    int n = ch->nchanges;
    int64_t best = INT64_MAX, due = 0;
    for (int i = 0; i < n; i++) {
        int64_t ahead = n - 1 - i + k;
        int64_t half = c[i].halfw + ahead * r->uperiod + (n - 1 - i) * r->jitter;
        if (half < best) {
            best = half;
            due = c[i].at + ahead * r->period;
        }
    }
    best += r->jitter > r->period / STRAY ? r->jitter : r->period / STRAY;
    *lo = due - best;
    *hi = due + best;
}

/* Where to look next for a regular writer after a look at now, or 0: first
 * where its next change was aimed at, then every FINE_NS across its window;
 * once the window has passed empty (a late change), ever further apart
 * until the window of the change after; nothing after that window (the
 * writer has stopped, or changed its pace). */
static int64_t window_look(mmapipc_channel *ch, const struct rhythm *r, int64_t now)
{
    int64_t lo, hi, lo2, hi2, first;
    due_window(ch, r, 1, &lo, &hi);
    due_window(ch, r, 2, &lo2, &hi2);
    if (now >= hi2)
        return 0;
    if (now >= hi && now < lo2) {
        int64_t late = now - hi > FINE_NS ? now - hi : FINE_NS;
        ch->win_lo = lo2;
        ch->win_hi = hi2;
        return now + late < lo2 ? now + late : lo2;
    }
    if (now >= hi) {
        lo = lo2;
        hi = hi2;
    }
    first = ch->aim >= lo - FINE_NS && ch->aim < hi ? ch->aim : lo;
    ch->win_lo = first;
    ch->win_hi = hi;
    ch->aimed = now < first && first == ch->aim;
    return now < first ? first : (now + FINE_NS < hi ? now + FINE_NS : hi);
}

/* Before a writer's rhythm can be told (two changes seen): where its third
 * change lands if it keeps the gap between the two, give or take what their
 * estimates allow, is looked at every max_gap even after a silence, so that
 * the third change is pinned down closely enough for the fourth to be met
 * (mmap_w's first changes are found by looks idle_gap apart).  0: none. */
static int64_t third_look(const mmapipc_channel *ch, int64_t now)
{
    const struct change *c = ch->changes;
    int64_t gap, half;
    if (!ch->wp.predict || ch->nchanges != 2)
        return 0;
    gap = c[1].at - c[0].at;
    half = c[0].halfw + 2 * c[1].halfw + gap / STRAY;
    if (now >= c[1].at + gap + half || half > 4 * ch->wp.idle_gap)
        return 0;   /* passed, or too vague a guess to pay for (two changes hours apart) */
    return now < c[1].at + gap - half ? c[1].at + gap - half : now + ch->wp.max_gap;
}

/* Looks at a regular writer's windows may skip the allowance once this many
 * of its changes in a row (net) were found inside them. */
#define IN_STEP 3

/* When to look next after a look at now: a little before the gap in force
 * runs out (room for a wake-up that comes late), or sooner where a regular
 * writer's next change is due: first where it was aimed at, then every fine
 * step across its window.  A writer found in step with its windows is looked
 * at there alone when that is no later than the gap.  Never a nap longer than
 * the bound in force.  Notes the window the look belongs to. */
static int64_t next_look(mmapipc_channel *ch, int64_t now)
{
    int64_t gap = gap_in_force(ch, now), bound = now + gap - allowance(gap), at = 0, soon;
    ch->win_lo = ch->win_hi = 0;
    ch->aimed = 0;
    at = ch->regular ? window_look(ch, &ch->rhythm, now) : third_look(ch, now);
    if (at == 0 || at > (ch->in_step >= IN_STEP ? now + gap : bound)) {
        ch->aimed = 0;
        return bound;
    }
    if (ch->rhythm.period < SLOW_NS)
        return at;
    /* planned as much earlier as sleeps end late, to land where it is meant
     * to; never sooner than a quarter step from now */
    soon = at < now + FINE_NS / 4 ? at : now + FINE_NS / 4;
    return at - ch->lateness > soon ? at - ch->lateness : soon;
}

/* Keep count of whether a regular writer's changes come inside their windows:
 * not found before the window began, nor after it ended empty. */
static void score_window(mmapipc_channel *ch, int64_t now)
{
    if (ch->win_hi == 0)
        return;
    if (now >= ch->win_lo && ch->last_poll <= ch->win_hi)
        ch->in_step += ch->in_step < 4;
    else
        ch->in_step = ch->in_step > -2 ? ch->in_step - 2 : -4;
}

/* Learn how late a timed sleep typically ends (a running average, outliers
 * left out), so that looks at a regular writer's window can be planned that
 * much earlier and land where they are meant to. */
static void note_lateness(mmapipc_channel *ch, int64_t now)
{
    int64_t late = now - ch->planned;
    if (ch->planned > 0 && late >= 0 && late < 10 * FINE_NS)
        ch->lateness += (late - ch->lateness) / 16;
    ch->planned = 0;
}

/* One look in the wait: 1 changed, 0 not, < 0 an error.  A look that came
 * later than planned by more than the room left for it is counted: a late
 * wake-up, not the design. */
static int look(mmapipc_channel *ch, int64_t now, uint32_t *word, int *notify)
{
    int rc = poll_locked(ch, WAIT_CHECKS * ch->check_ns, word, notify);
    ch->st.polls++;
    if (ch->planned > 0 && now - ch->planned > allowance(gap_in_force(ch, ch->planned)))
        ch->st.late_polls++;
    note_lateness(ch, now);
    if (rc == 1) {
        score_window(ch, now);
        note_change(ch, now);
        aim_next(ch, now);
        ch->noted = 1;
    }
    ch->last_poll = now;
    return rc;
}

/* Guarded: set the waiter's marker in the futex word (see flag_waiter). */
static int flag_guarded(mmapipc_channel *ch, _Atomic uint32_t *rw, uint32_t *word)
{
    struct guard g;
    int rc;
    guard_prepare(&g, ch->rw.base, ch->rw.len);
    if (sigsetjmp(g.env, 0) != 0)
        return guard_fault(&g);
    guard_arm(&g);
    rc = mmapipc_rec__flag_waiter(&ch->geo, rw, word);
    guard_end(&g);
    return rc;
}

/* May the wait sleep on a notifying writer's futex word, whose value before
 * the look was *word?  1 yes (*word: the value to sleep on, with the waiter's
 * marker set, so that the writer knows to wake it); 0 look again now (a
 * store since); -1 no, look as for a legacy writer: a store under way, or
 * this process may not write the file to say it waits (a fault: the same). */
static int may_sleep(mmapipc_channel *ch, uint32_t *word)
{
    _Atomic uint32_t *rw;
    int rc;
    if (!mmapipc_rec__flaggable(&ch->geo))
        return 1;   /* the writer wakes whoever may be there */
    if ((rw = mmapipc_rec__rw_word(&ch->rw, ch->fd, &ch->geo)) == NULL)
        return -1;
    rc = flag_guarded(ch, rw, word);
    return rc < -1 ? -1 : rc;
}

/* A slow regular writer's window is looked at without a pause when it is this
 * narrow a share of the period, counting the time before it that
 * MMAPIPC_DUE (asked for) was handed back: after a sleep here the caches are
 * cold (the CPU was lent out meanwhile), and a change then took ~50 us more
 * to be found and ~100 us more to be taken by the caller.  Spinning costs at
 * most 1/SPIN_SHARE of a core (the window of a writer still being learnt:
 * mmap_w's fifth change), about 0.1 % once its period is known. */
#define SPIN_SHARE 100

/* Where the spin through the window looked at next begins, or 0: none. */
static int64_t spin_from(const mmapipc_channel *ch, int ready)
{
    int64_t from = ch->win_lo - FINE_NS - (ready ? MMAPIPC_READY_NS + ch->lateness : 0);
    int slow = ch->regular && ch->rhythm.period >= SLOW_NS && ch->win_hi != 0;
    return slow && ch->win_hi - from <= ch->rhythm.period / SPIN_SHARE ? from : 0;
}

/* Spin now?  From MMAPIPC_READY_NS before the window on where MMAPIPC_DUE was
 * handed back for it, never sooner: the caller that asked for it may have been
 * cut short on the way (a signal), or be another thread. */
static int spin_through(const mmapipc_channel *ch, int64_t now)
{
    int64_t from = spin_from(ch, ch->readied == ch->win_hi);
    return from != 0 && now >= from && now < ch->win_hi;
}

/* When to hand back MMAPIPC_DUE (asked for, once a window) before the window
 * looked at next is spun through, when the look planned at next would come
 * too late to (a look planned by the bound in force may land just before the
 * window, inside the lead: the hand-back, whose read() looks, replaces it if
 * it still keeps the bound, its wake-up late as they typically are); 0: not
 * now. */
static int64_t ready_at(const mmapipc_channel *ch, int flags, int64_t now, int64_t next)
{
    int64_t due = ch->win_lo - ch->lateness - MMAPIPC_READY_NS;
    int64_t room = allowance(gap_in_force(ch, now)) - ch->lateness;
    int ready = (flags & MMAPIPC_WAIT_READY) && spin_from(ch, 1) != 0 &&
                ch->readied != ch->win_hi && next + ch->lateness + FINE_NS >= due &&
                due <= next + (room > 0 ? room : 0) && due > now + FINE_NS;
    return ready ? due : 0;
}

/* A futex sleep that a held signal ends at once: a futex cannot let signals in
 * atomically, so one held since the look returns now, and the rest are let in
 * for the sleep (a signal in the few instructions between is the one left). */
static int futex_sleep_held(_Atomic uint32_t *addr, uint32_t word, int64_t until)
{
    sigset_t pending, held;
    int rc, err;
    if (sleep_mask == NULL)
        return futex_sleep(addr, word, until);
    sigpending(&pending);
    for (int sig = 1; sig < NSIG; sig++) {
        if (sigismember(&pending, sig) == 1 && sigismember(sleep_mask, sig) == 0) {
            errno = EINTR;
            return -1;
        }
    }
    pthread_sigmask(SIG_SETMASK, sleep_mask, &held);
    rc = futex_sleep(addr, word, until);
    err = errno;
    pthread_sigmask(SIG_SETMASK, &held, NULL);
    errno = err;
    return rc;
}

/* Between two looks, without the channel's mutex: on a notifying writer's
 * futex until it stores (2 when MMAPIPC_RELOOK_NS passed first), else until
 * the next look is due (0), or MMAPIPC_READY_NS before it (3, MMAPIPC_DUE to
 * the caller).  -1 on a signal; 1 when the slice ran out before the next look
 * was due; 4 (MMAPIPC_SPUN) not at all, once *spun: a spin, which no signal
 * cuts short, went through a window in vain.  flags: the call's MMAPIPC_WAIT_*. */
static int pause_wait(mmapipc_channel *ch, int flags, int64_t now, int64_t end, uint32_t word,
                      int notify, int *spun)
{
    int64_t next, due;
    int rc, may;
    if (ch->wp.busy) {
        pthread_mutex_unlock(&ch->lock);
        cpu_relax();
        return 0;
    }
    ch->notified = notify;
    may = notify ? may_sleep(ch, &word) : -1;
    if (may == 0) {
        pthread_mutex_unlock(&ch->lock);
        return 0;   /* a store since the look: look again */
    }
    if (may > 0) {
        _Atomic uint32_t *addr = futex_word(ch, ch->map);
        int64_t until = now + MMAPIPC_RELOOK_NS < end ? now + MMAPIPC_RELOOK_NS : end;
        ch->st.sleeps++;
        pthread_mutex_unlock(&ch->lock);
        rc = futex_sleep_held(addr, word, until);
        return rc == 1 && until < end ? 2 : rc;
    }
    next = next_look(ch, now);
    if (spin_through(ch, now)) {
        *spun = 1;
        pthread_mutex_unlock(&ch->lock);
        cpu_relax();
        return 0;
    }
    if (*spun && (flags & MMAPIPC_WAIT_READY)) {
        pthread_mutex_unlock(&ch->lock);
        return 4;
    }
    if ((due = ready_at(ch, flags, now, next)) != 0 && due < end) {
        ch->readied = ch->win_hi;
        ch->st.readied++;
        pthread_mutex_unlock(&ch->lock);
        return sleep_until(due) == 0 ? 3 : -1;
    }
    ch->planned = next < end ? next : 0;
    pthread_mutex_unlock(&ch->lock);
    if (next >= end)   /* the caller's next call looks first thing */
        return sleep_until(end) == 0 ? 1 : -1;
    return sleep_until(next);
}

static int wait_for(mmapipc_channel *ch, int64_t timeout, int flags);

int mmapipc_wait(mmapipc_channel *ch, int64_t timeout, int flags)
{
    sigset_t all, own;
    int rc;
    if (!(flags & MMAPIPC_WAIT_SIGNALS))
        return wait_for(ch, timeout, flags);
    /* hold every signal but those a fault raises: a SIGBUS held in a guarded
     * copy would kill the process instead of reaching the guard */
    static const int faults[] = {SIGBUS, SIGSEGV, SIGILL, SIGFPE, SIGTRAP, SIGSYS};
    sigfillset(&all);
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++)
        sigdelset(&all, faults[i]);
    pthread_sigmask(SIG_BLOCK, &all, &own);
    sleep_mask = &own;
    rc = wait_for(ch, timeout, flags);
    sleep_mask = NULL;
    pthread_sigmask(SIG_SETMASK, &own, NULL);   /* a held signal is delivered here */
    return rc;
}

static int wait_for(mmapipc_channel *ch, int64_t timeout, int flags)
{
    int64_t start = now_ns(), now = start;
    uint32_t word = 0;
    int notify = 0, rc = enter_reader(ch);
    if (rc != 0)
        return rc;
    if (!ch->wp.busy)
        fine_timer();
    if ((flags & MMAPIPC_WAIT_RESUME) && !ch->wp.busy && !ch->notified && ch->last_poll > 0) {
        /* the slice before ended between two looks: keep their pace */
        int64_t next = next_look(ch, ch->last_poll), end = start + timeout;
        /* unless this window's MMAPIPC_DUE is still to be handed back: the
         * look now plans it */
        int64_t due = ready_at(ch, flags, now, next);
        if (next > now && !spin_through(ch, now) && !(due != 0 && due < end)) {
            ch->planned = next < end ? next : 0;
            pthread_mutex_unlock(&ch->lock);
            if (sleep_until(next < end ? next : end) != 0)
                return MMAPIPC_EINTR;
            if ((rc = enter(ch)) != 0)
                return rc;
            now = now_ns();
        }
    }
    int spun = 0;
    while ((rc = look(ch, now, &word, &notify)) == 0) {
        if (now - start >= timeout)
            return leave(ch, MMAPIPC_ETIMEDOUT);
        /* a spin leaves the caller's code cold on a shared machine (its cache
         * is lent out): let it take the path of a change now and then */
        if (ch->wp.busy && (flags & MMAPIPC_WAIT_READY) && now - start >= MMAPIPC_WARM_NS)
            return leave(ch, MMAPIPC_DUE);
        int paused = pause_wait(ch, flags, now, start + timeout, word, notify, &spun);
        if (paused < 0)
            return MMAPIPC_EINTR;
        if (paused == 1 || paused == 3 || paused == 4)
            return paused == 1 ? MMAPIPC_ETIMEDOUT : paused == 3 ? MMAPIPC_DUE : MMAPIPC_SPUN;
        if ((rc = enter(ch)) != 0)
            return rc;   /* closed while we slept */
        ch->st.relooks += paused == 2;
        now = now_ns();
    }
    return leave(ch, rc);
}
