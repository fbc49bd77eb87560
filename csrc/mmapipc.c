/*
 * mmapipc C core: the system calls of mmap_w/mmap_r, checked, and guarded
 * copies.  No Python here: every function returns a negative MMAPIPC_E*
 * code on failure and leaves errno set for MMAPIPC_EOS.
 */
#define _GNU_SOURCE
#include "mmapipc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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

/* What a reader knows about the last record it returned. */
enum trust {
    TRUST_NONE,     /* nothing loaded yet */
    TRUST_LOADED,   /* copy holds the last record loaded */
};

#define NGAPS 8

struct mmapipc_channel {
    pthread_mutex_t lock;     /* held by every call that touches the mapping */
    unsigned forks;           /* the fork generation the mutex was made in */
    unsigned char *map;       /* NULL when closed */
    int fd;                   /* kept to fstat the mapped file; -1 when closed */
    char *path;               /* absolute path it was opened by (our copy) */
    int flags;
    uint64_t dev, ino;        /* the file it maps */
    size_t size;
    int marker_off, seq_off;  /* -1: no sequence lock */
    unsigned char *copy;      /* reader: the last record loaded */
    unsigned char *scratch;   /* reader: two work copies (2 * size) */
    enum trust have;
    uint16_t seq;             /* reader: sequence of copy */
    uint32_t stuck;           /* marker and odd sequence known to be stuck */
    int stuck_valid;
    int64_t stuck_ns, unstable_ns, check_ns, checked_at;
    int short_file;           /* the last check found the file too short */
    struct mmapipc_wait_params wp;
    int64_t last_poll;        /* wait: when the record was last looked at */
    int notified;             /* wait: the last look found a notifying writer */
    int64_t changes[NGAPS];   /* wait: estimated times of the last changes */
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

/* Sleep until the monotonic time t; -1 (errno EINTR) if a signal cut it short. */
static int sleep_until(int64_t t)
{
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
 * held by a thread that is not there; make it anew, and forget the record. */
static void after_fork(mmapipc_channel *ch)
{
    unsigned now = atomic_load(&fork_generation);
    if (ch->forks != now) {
        pthread_mutex_init(&ch->lock, NULL);
        ch->forks = now;
        ch->have = TRUST_NONE;
    }
}

static void lock_channel(mmapipc_channel *ch)
{
    after_fork(ch);
    pthread_mutex_lock(&ch->lock);
}

static int lock_offsets_ok(size_t size, int marker, int seq)
{
    if (marker == -1 && seq == -1)
        return 1;
    if (marker < 0 || seq < 0 || (size_t)marker >= size || (size_t)seq + 2 > size)
        return 0;
    return seq % 2 == 0 && marker != seq && marker != seq + 1;
}

mmapipc_channel *mmapipc_new(size_t size, int marker_off, int seq_off)
{
    mmapipc_channel *ch;
    if (size == 0 || !lock_offsets_ok(size, marker_off, seq_off)) {
        errno = EINVAL;
        return NULL;
    }
    ch = calloc(1, sizeof *ch);
    if (ch == NULL)
        return NULL;
    ch->copy = malloc(3 * size);
    if (ch->copy == NULL) {
        free(ch);
        return NULL;
    }
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, at_fork_once);
    ch->scratch = ch->copy + size;
    pthread_mutex_init(&ch->lock, NULL);
    ch->forks = atomic_load(&fork_generation);
    ch->fd = -1;
    ch->size = size;
    ch->marker_off = marker_off;
    ch->seq_off = seq_off;
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

static inline int has_seqlock(const mmapipc_channel *ch)
{
    return ch->seq_off >= 0;
}

static inline _Atomic uint16_t *seq_word(const mmapipc_channel *ch, const unsigned char *m)
{
    return (_Atomic uint16_t *)(m + ch->seq_off);
}

/* Does the record carry our marker (a sequence lock in its padding)? */
static inline int marked(const mmapipc_channel *ch, const unsigned char *m)
{
    unsigned char mark = has_seqlock(ch) ? m[ch->marker_off] : 0;
    return mark == MMAPIPC_SEQ_MARKER || mark == MMAPIPC_NOTIFY_MARKER;
}

/* The aligned 32-bit word that holds the sequence: what a notifying writer
 * wakes and its waiters sleep on.  Only where it lies inside the record. */
static inline int can_notify(const mmapipc_channel *ch)
{
    return has_seqlock(ch) && (size_t)(ch->seq_off & ~3) + 4 <= ch->size;
}

static inline _Atomic uint32_t *futex_word(const mmapipc_channel *ch, const unsigned char *m)
{
    return (_Atomic uint32_t *)(m + (ch->seq_off & ~3));
}

static void futex_wake(_Atomic uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Sleep until woken or the word no longer holds value (0), until the
 * monotonic time until (1), or a signal (-1, errno EINTR). */
static int futex_sleep(_Atomic uint32_t *word, uint32_t value, int64_t until)
{
    struct timespec ts = {(time_t)(until / 1000000000), (long)(until % 1000000000)};
    if (syscall(SYS_futex, word, FUTEX_WAIT_BITSET, value, &ts, NULL,
                FUTEX_BITSET_MATCH_ANY) == 0)
        return 0;
    return errno == ETIMEDOUT ? 1 : errno == EINTR ? -1 : 0;
}

/* Forget what was loaded (a new file, or a new mapping of it). */
static void reset_reader(mmapipc_channel *ch)
{
    ch->have = TRUST_NONE;
    ch->stuck_valid = 0;
    ch->nchanges = 0;
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
        return (size_t)st->st_size < ch->size ? MMAPIPC_ESHORT : 0;
    if (flags & MMAPIPC_FORCE)
        return 0;
    if (st->st_nlink > 1)
        return MMAPIPC_ELINKS;
    return (size_t)st->st_size > ch->size ? MMAPIPC_ESHRINK : 0;
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
    if (writable && ftruncate(fd, (off_t)ch->size) != 0)
        goto fail_errno;
    m = mmap(NULL, ch->size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
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
                         : map_file(ch, path, flags, &map, &fd, &st);
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
    if (ch->map != NULL && munmap(ch->map, ch->size) != 0)
        rc = MMAPIPC_EOS;
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
    return leave(ch, msync(ch->map, ch->size, MS_SYNC) == 0 ? 0 : MMAPIPC_EOS);
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
    ch->short_file = (size_t)st.st_size < ch->size;
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

/* The parts of a record outside the lock bytes: at most three [from, to)
 * spans around the marker byte and the two sequence bytes, in either order. */
struct spans {
    size_t from[3], to[3];
    int n;
};

static void field_spans(const mmapipc_channel *ch, struct spans *sp)
{
    size_t holes[2][2] = {{(size_t)ch->marker_off, (size_t)ch->marker_off + 1},
                          {(size_t)ch->seq_off, (size_t)ch->seq_off + 2}};
    int first = ch->seq_off < ch->marker_off;
    size_t at = 0;
    sp->n = 0;
    if (!has_seqlock(ch)) {
        sp->from[0] = 0;
        sp->to[0] = ch->size;
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
    if (ch->size > at) {
        sp->from[sp->n] = at;
        sp->to[sp->n++] = ch->size;
    }
}

static void copy_fields(const mmapipc_channel *ch, unsigned char *dst, const unsigned char *src)
{
    struct spans sp;
    field_spans(ch, &sp);
    for (int i = 0; i < sp.n; i++)
        memcpy(dst + sp.from[i], src + sp.from[i], sp.to[i] - sp.from[i]);
}

static int same_fields(const mmapipc_channel *ch, const unsigned char *a, const unsigned char *b)
{
    struct spans sp;
    field_spans(ch, &sp);
    for (int i = 0; i < sp.n; i++)
        if (memcmp(a + sp.from[i], b + sp.from[i], sp.to[i] - sp.from[i]) != 0)
            return 0;
    return 1;
}

static inline int notifies(const mmapipc_channel *ch)
{
    return (ch->flags & MMAPIPC_NOTIFY) && can_notify(ch);
}

/* Make the sequence odd for our store: from even by compare-and-swap, so that
 * two writers never store at once; from an odd value that moves (another
 * writer storing), after it goes even; from one that has stood still for
 * stuck_ns (a writer that died mid-store), by taking it over.  Without a
 * marker the sequence bytes are a legacy writer's padding: start from them. */
static uint16_t begin_store(mmapipc_channel *ch, unsigned char *m)
{
    _Atomic uint16_t *seq = seq_word(ch, m);
    uint16_t s = atomic_load_explicit(seq, memory_order_relaxed), last = 0;
    int64_t since = 0;
    if (!marked(ch, m))
        s = (uint16_t)(s + (s & 1));
    for (;;) {
        uint16_t want = (uint16_t)(s + 1 + (s & 1));   /* the next odd value */
        if (!(s & 1) || (since && s == last && now_ns() - since > ch->stuck_ns)) {
            if (atomic_compare_exchange_weak_explicit(seq, &s, want, memory_order_acquire,
                                                      memory_order_relaxed))
                return want;
            continue;
        }
        if (!since || s != last) {
            last = s;
            since = now_ns();
        }
        cpu_relax();
        s = atomic_load_explicit(seq, memory_order_relaxed);
    }
}

/* The store itself: the sequence goes odd, the fields are copied, it goes
 * even again.  It carries on from the sequence in the file, so that writers
 * that take turns (or a writer that died mid-store) keep it moving. */
static int store_guarded(mmapipc_channel *ch, const unsigned char *rec)
{
    struct guard g;
    unsigned char *m = ch->map;
    guard_prepare(&g, m, ch->size);
    if (sigsetjmp(g.env, 0) != 0)
        return guard_fault(&g);
    guard_arm(&g);
    if (has_seqlock(ch)) {
        uint16_t odd = begin_store(ch, m);
        m[ch->marker_off] = notifies(ch) ? MMAPIPC_NOTIFY_MARKER : MMAPIPC_SEQ_MARKER;
        atomic_thread_fence(memory_order_release);
        copy_fields(ch, m, rec);
        atomic_thread_fence(memory_order_release);
        atomic_store_explicit(seq_word(ch, m), (uint16_t)(odd + 1), memory_order_relaxed);
    } else {
        memcpy(m, rec, ch->size);
    }
    guard_end(&g);
    return 0;
}

int mmapipc_store(mmapipc_channel *ch, const char *rec)
{
    int rc = enter(ch);
    if (rc != 0)
        return rc;
    rc = store_guarded(ch, (const unsigned char *)rec);
    if (rc == 0 && notifies(ch))   /* a truncated file: EFAULT here, not SIGBUS */
        futex_wake(futex_word(ch, ch->map));
    if (rc == 0)   /* a truncated file would swallow the record: say so */
        rc = check_file_if_due(ch);
    return leave(ch, rc);
}

/* ---- loads ------------------------------------------------------------- */


static inline uint32_t pad_value(const mmapipc_channel *ch, uint16_t s)
{
    return ((uint32_t)ch->map[ch->marker_off] << 16) | s;
}

/* A store is in progress (odd sequence): wait for it, unless this very value
 * has not moved for stuck_ns (a writer that died mid-store, or legacy padding
 * that looks like the lock): then remember it and read by agreement.
 * Returns 1 to read by agreement now, 0 to look again. */
static int wait_for_store(mmapipc_channel *ch, uint16_t s, uint16_t *last, int64_t *since)
{
    int64_t now = now_ns();
    if (*since == 0 || s != *last) {
        *last = s;          /* the sequence moved: a live writer, start again */
        *since = now;
        return 0;
    }
    if (now - *since > ch->stuck_ns) {
        ch->stuck = pad_value(ch, s);
        ch->stuck_valid = 1;
        return 1;
    }
    if (now - *since < 20000) {
        cpu_relax();
    } else {
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* Two copies that agree (and, with a marker, an unchanged sequence). */
static int copies_agree(mmapipc_channel *ch, unsigned char *dst, int mark, uint16_t s1)
{
    const unsigned char *m = ch->map;
    unsigned char *second = dst == ch->scratch ? ch->scratch + ch->size : ch->scratch;
    memcpy(second, m, ch->size);
    atomic_thread_fence(memory_order_acquire);
    if (memcmp(dst, second, ch->size) != 0)
        return 0;
    return !mark || atomic_load_explicit(seq_word(ch, m), memory_order_relaxed) == s1;
}

/* Has the reader tried for a stable copy longer than unstable_ns? */
static int gave_up(const mmapipc_channel *ch, int64_t *started)
{
    int64_t now = now_ns();
    if (*started == 0)
        *started = now;
    return now - *started > ch->unstable_ns;
}

/* Fill dst with a copy that can be trusted (inside a guard).  Through the
 * lock when the sequence was even, unchanged across the copy, and moved since
 * the last record; otherwise (no lock, a stuck one, or fields that changed
 * while the sequence did not) when two copies agree. */
static int fetch(mmapipc_channel *ch, unsigned char *dst)
{
    const unsigned char *m = ch->map;
    int64_t started = 0, since = 0;
    uint16_t last_odd = 0;
    for (unsigned long i = 1;; i++) {
        if ((i & 63) == 0 && gave_up(ch, &started))
            return MMAPIPC_EUNSTABLE;
        int mark = marked(ch, m);
        uint16_t s1 = mark ? atomic_load_explicit(seq_word(ch, m), memory_order_acquire) : 0;
        int stuck = mark && (s1 & 1) && ch->stuck_valid && ch->stuck == pad_value(ch, s1);
        if (ch->stuck_valid && !stuck)
            ch->stuck_valid = 0;   /* it moved: a live writer again */
        if (mark && (s1 & 1) && !stuck && !wait_for_store(ch, s1, &last_odd, &since))
            continue;
        memcpy(dst, m, ch->size);
        atomic_thread_fence(memory_order_acquire);
        if (mark && !(s1 & 1) && !stuck && s1 != ch->seq &&
            atomic_load_explicit(seq_word(ch, m), memory_order_relaxed) == s1 &&
            marked(ch, m)) {
            ch->seq = s1;
            ch->st.seqlock_reads++;
            return 1;
        }
        if (copies_agree(ch, dst, mark, s1)) {
            ch->seq = s1;
            ch->st.fallback_reads++;
            return 0;
        }
    }
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
    guard_prepare(&g, ch->map, ch->size);
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
    covered = ch->scratch[ch->size - 1] != 0;
    if (marked(ch, ch->scratch)) {   /* our lock bytes are not the record's: zero them */
        ch->scratch[ch->marker_off] = 0;
        ch->scratch[ch->seq_off] = 0;
        ch->scratch[ch->seq_off + 1] = 0;
    }
    if (ch->have != TRUST_NONE && same_fields(ch, ch->scratch, ch->copy))
        return 0;
    if (!covered && (rc = check_size(ch)) != 0)
        return rc;
    memcpy(ch->copy, ch->scratch, ch->size);
    ch->have = TRUST_LOADED;
    memcpy(out, ch->copy, ch->size);
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
    int rc = enter(ch);
    if (rc != 0)
        return rc;
    return leave(ch, load_locked(ch, out));
}

static int raw_guarded(mmapipc_channel *ch, unsigned char *out)
{
    struct guard g;
    guard_prepare(&g, ch->map, ch->size);
    if (sigsetjmp(g.env, 0) != 0)
        return guard_fault(&g);
    guard_arm(&g);
    memcpy(out, ch->map, ch->size);
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
    guard_prepare(&g, m, ch->size);
    if (sigsetjmp(g.env, 0) != 0)
        return guard_fault(&g);
    guard_arm(&g);
    *notify = can_notify(ch) && m[ch->marker_off] == MMAPIPC_NOTIFY_MARKER;
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
    int rc = enter(ch);
    if (rc != 0)
        return rc;
    uint32_t word;
    int notify;
    return leave(ch, poll_locked(ch, ch->check_ns, &word, &notify));
}

/* ---- waiting ----------------------------------------------------------- */

/* How closely to look around the time a regular writer is due. */
#define FINE_NS 50000

/* The period of a regular writer: the mean gap between the estimated times
 * of its last changes, and in *spread how far the gaps stray; 0 if there are
 * too few, or they stray more than a quarter of it (an irregular writer). */
static int64_t writer_period(const mmapipc_channel *ch, int64_t *spread)
{
    int n = ch->nchanges;
    int64_t lo = INT64_MAX, hi = 0, period;
    if (n < 3)
        return 0;
    for (int i = 1; i < n; i++) {
        int64_t gap = ch->changes[i] - ch->changes[i - 1];
        lo = gap < lo ? gap : lo;
        hi = gap > hi ? gap : hi;
    }
    period = (ch->changes[n - 1] - ch->changes[0]) / (n - 1);
    *spread = hi - lo;
    return period > 0 && hi - lo <= period / 4 ? period : 0;
}

/* A change was seen at now.  It landed after the previous look: remember the
 * middle when that look was a close one, else take it as seen FINE_NS/2 after
 * it landed (a look at the bound finds it there; a middle that far off would
 * make a regular writer look irregular, and it never gets a close look). */
static void note_change(mmapipc_channel *ch, int64_t now)
{
    int64_t since = ch->last_poll > 0 ? now - ch->last_poll : 0;
    int64_t landed = now - (since < 2 * FINE_NS ? since : FINE_NS) / 2;
    if (ch->nchanges == NGAPS) {
        memmove(ch->changes, ch->changes + 1, (NGAPS - 1) * sizeof ch->changes[0]);
        ch->nchanges--;
    }
    ch->changes[ch->nchanges++] = landed;
}

/* The gap in force: max_gap while the writer changed the record within
 * idle_after, idle_gap after a longer silence. */
static int64_t gap_in_force(const mmapipc_channel *ch, int64_t now)
{
    int64_t last = ch->nchanges ? ch->changes[ch->nchanges - 1] : 0;
    return last > 0 && now - last < ch->wp.idle_after ? ch->wp.max_gap : ch->wp.idle_gap;
}

/* Room left before the bound for a wake-up that comes late: an eighth of the
 * gap, at most half a millisecond. */
static inline int64_t allowance(int64_t gap)
{
    return gap / 8 < 500000 ? gap / 8 : 500000;
}

/* When to look next: a little before the gap in force runs out (room for a
 * wake-up that comes late), or sooner where a regular writer is due:
 * a first look half the spread of its gaps before its next change is due,
 * then every FINE_NS until that change is half the spread and FINE_NS late. */
static int64_t next_look(const mmapipc_channel *ch, int64_t now)
{
    int64_t gap = gap_in_force(ch, now), next = now + gap - allowance(gap), spread = 0;
    int64_t period = ch->wp.predict ? writer_period(ch, &spread) : 0;
    if (period > 0) {
        int64_t last = ch->changes[ch->nchanges - 1], tail = spread / 2 + FINE_NS;
        int64_t past = now - last - tail;
        int64_t due = last + period * (past >= 0 ? past / period + 1 : 1);
        int64_t soon = now < due - spread / 2 ? due - spread / 2 : now + FINE_NS;
        next = soon < next ? soon : next;
    }
    return next;
}

/* One look in the wait: 1 changed, 0 not, < 0 an error.  A look later than
 * the bound planned for it is counted: a late wake-up, not the design. */
static int look(mmapipc_channel *ch, int64_t now, int64_t bound, uint32_t *word, int *notify)
{
    int rc = poll_locked(ch, WAIT_CHECKS * ch->check_ns, word, notify);
    ch->st.polls++;
    if (bound > 0 && now > bound)
        ch->st.late_polls++;
    if (rc == 1)
        note_change(ch, now);
    ch->last_poll = now;
    return rc;
}

/* Between two looks, without the channel's mutex: on a notifying writer's
 * futex until it stores (or the slice ends: a legacy writer that takes over
 * wakes nobody), else until the next look is due.  -1 on a signal; 1 when the
 * slice ran out before the next look was due. */
static int pause_wait(mmapipc_channel *ch, int64_t now, int64_t end, uint32_t word, int notify)
{
    int64_t next;
    if (ch->wp.busy) {
        pthread_mutex_unlock(&ch->lock);
        cpu_relax();
        return 0;
    }
    ch->notified = notify;
    if (notify) {
        _Atomic uint32_t *addr = futex_word(ch, ch->map);
        ch->st.sleeps++;
        pthread_mutex_unlock(&ch->lock);
        return futex_sleep(addr, word, end);
    }
    next = next_look(ch, now);
    pthread_mutex_unlock(&ch->lock);
    if (next >= end)   /* the caller's next call looks first thing */
        return sleep_until(end) == 0 ? 1 : -1;
    return sleep_until(next);
}

int mmapipc_wait(mmapipc_channel *ch, int64_t timeout, int resume)
{
    int64_t start = now_ns(), now = start, bound = 0;
    uint32_t word = 0;
    int notify = 0, rc = enter(ch);
    if (rc != 0)
        return rc;
    if (!ch->wp.busy)
        fine_timer();
    if (resume && !ch->wp.busy && !ch->notified && ch->last_poll > 0) {
        /* the slice before ended between two looks: keep their pace */
        int64_t next = next_look(ch, ch->last_poll), end = start + timeout;
        if (next > now) {
            pthread_mutex_unlock(&ch->lock);
            if (sleep_until(next < end ? next : end) != 0)
                return MMAPIPC_EINTR;
            if ((rc = enter(ch)) != 0)
                return rc;
            now = now_ns();
        }
    }
    while ((rc = look(ch, now, bound, &word, &notify)) == 0) {
        if (now - start >= timeout)
            return leave(ch, MMAPIPC_ETIMEDOUT);
        bound = notify ? 0 : now + gap_in_force(ch, now);
        if ((rc = pause_wait(ch, now, start + timeout, word, notify)) != 0)
            return rc > 0 ? MMAPIPC_ETIMEDOUT : MMAPIPC_EINTR;
        if ((rc = enter(ch)) != 0)
            return rc;   /* closed while we slept */
        now = now_ns();
    }
    return leave(ch, rc);
}
