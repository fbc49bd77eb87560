/*
 * mmapipc C core: map a file with MAP_SHARED and copy whole records in and
 * out of it under a SIGBUS guard, with a sequence lock in padding bytes.
 *
 * This header is the single source of truth: the cffi build script reads
 * the part between the CDEF markers for its cdef, so C and Python share
 * one declaration of every struct and function.  Functions return a
 * negative MMAPIPC_E* code on failure; MMAPIPC_EOS means errno says why.
 *
 * A channel is one mapped record and the state of its reader or writer.  It
 * is opaque, and safe to share between threads: every call that touches the
 * mapping holds the channel's mutex, and close() unmaps only when no call is
 * inside the mapping (a call that comes after it fails with EBADF).
 */
#ifndef MMAPIPC_H
#define MMAPIPC_H

#include <stddef.h>
#include <stdint.h>

/* CDEF BEGIN */

/* The record of mmap_w and mmap_r, laid out by the C compiler. */
struct STU {
    int id;
    char name[20];
    char sex;
};

/* Return codes (errno is only meaningful with MMAPIPC_EOS). */
#define MMAPIPC_EOS -1        /* a system call failed: errno says why */
#define MMAPIPC_ENOTREG -2    /* not a regular file */
#define MMAPIPC_ESHRINK -3    /* the writer would shrink a longer file */
#define MMAPIPC_ESHORT -4     /* the file is shorter than one record */
#define MMAPIPC_EBUS -5       /* SIGBUS in a guarded copy: file truncated */
#define MMAPIPC_EUNSTABLE -6  /* the record never held still long enough */
#define MMAPIPC_ETIMEDOUT -7  /* a wait ran out of time */
#define MMAPIPC_EINTR -8      /* a wait was interrupted by a signal */
#define MMAPIPC_EREPLACED -9  /* the path no longer names the mapped file */
#define MMAPIPC_ELINKS -10    /* the writer would write a file with other hard links */
#define MMAPIPC_EPLANTED -11  /* a symlink planted in a sticky world-writable directory */
#define MMAPIPC_EFOREIGN -12  /* someone else's file in a sticky world-writable directory */

/* Flags for mmapipc_open. */
#define MMAPIPC_WRITE 1           /* map for writing (creates the file) */
#define MMAPIPC_FOLLOW_SYMLINKS 2 /* the writer may open through a symlink */
#define MMAPIPC_FORCE 4           /* the writer may shrink or share a file */
#define MMAPIPC_FOLLOW 8          /* a reader reopens the path when it names a new file */
#define MMAPIPC_NOTIFY 16         /* the writer wakes waiters after each store */

/* The marker byte that says a sequence lock is kept in the padding; the
 * second one says so too, and that the writer wakes waiters after each store
 * (FUTEX_WAKE on the aligned 32-bit word that holds the sequence). */
#define MMAPIPC_SEQ_MARKER 0xA5
#define MMAPIPC_NOTIFY_MARKER 0xA6
#define MMAPIPC_WAITED_MARKER 0xA7    /* that, and a waiter sleeps on the futex word */

/* A wait asleep on a notifying writer's futex looks at the record again after
 * this long (ns): a legacy writer that takes over wakes nobody. */
#define MMAPIPC_RELOOK_NS 200000000

typedef struct mmapipc_channel mmapipc_channel;

/* What a channel has counted. */
struct mmapipc_stats {
    uint64_t seqlock_reads;   /* copies accepted through the sequence lock */
    uint64_t fallback_reads;  /* copies accepted because two copies agreed */
    uint64_t polls;           /* looks at the record while waiting */
    uint64_t late_polls;      /* looks later than the bound in force (a late wake-up) */
    uint64_t reopened;        /* times a reader followed its path to a new file */
    uint64_t sleeps;          /* waits on a notifying writer's futex */
    uint64_t relooks;         /* of those, ended by MMAPIPC_RELOOK_NS, not by a store */
    uint64_t readied;         /* waits that returned MMAPIPC_DUE (a change about due) */
    int64_t file_size;        /* the file's size when last looked at, -1 unknown */
};

/* How a wait looks for changes (times in ns).  While the record changed within
 * the last idle_after, it looks at least every max_gap; after a longer silence,
 * every idle_gap.  predict looks more closely when a regular writer is due;
 * busy spins instead of sleeping. */
struct mmapipc_wait_params {
    int64_t max_gap;
    int64_t idle_gap;
    int64_t idle_after;
    int predict;
    int busy;
};

/* A closed channel for records of size bytes, with the sequence lock's marker
 * byte and 2-aligned 16-bit sequence at those offsets (-1, -1: no lock).
 * NULL with errno EINVAL for offsets out of range, unaligned or overlapping. */
mmapipc_channel *mmapipc_new(size_t size, int marker_off, int seq_off);

/* Close and free. */
void mmapipc_free(mmapipc_channel *ch);

/* Limits (ns): how long an odd sequence that does not move is waited for,
 * how long a reader tries for a stable copy, how often the file is checked. */
int mmapipc_set_limits(mmapipc_channel *ch, int64_t stuck, int64_t unstable,
                       int64_t file_check);

int mmapipc_set_wait(mmapipc_channel *ch, const struct mmapipc_wait_params *p);

/* Install the SIGBUS handler first in the chain (idempotent, thread-safe). */
int mmapipc_guard_install(void);

/* Hold new guarded copies and wait for those in progress, so that another
 * SIGBUS handler can be installed while none can fault; resume puts ours back
 * in front and lets them go on. */
void mmapipc_guard_pause(void);
int mmapipc_guard_resume(void);

/* Open path and map one record (the descriptor is kept, to watch the file). */
int mmapipc_open(mmapipc_channel *ch, const char *path, int flags);

/* Forget the last record loaded: the next load returns the record (1). */
int mmapipc_forget(mmapipc_channel *ch);

/* Unmap and close; safe to call twice. */
int mmapipc_close(mmapipc_channel *ch);

/* msync the record to the file. */
int mmapipc_sync(mmapipc_channel *ch);

/* Store a record (size bytes) in one guarded copy, under the sequence lock. */
int mmapipc_store(mmapipc_channel *ch, const char *rec);

/* Load a stable copy: 1 and out filled if it differs from the last one
 * loaded, 0 if not (out untouched). */
int mmapipc_load(mmapipc_channel *ch, char *out);

/* 1 if a load might return a new record (the fields differ), 0 if not. */
int mmapipc_poll(mmapipc_channel *ch);

/* One guarded copy of the mapped bytes into out, as they are. */
int mmapipc_load_raw(mmapipc_channel *ch, char *out);

/* Flags for mmapipc_wait.  RESUME: this call carries on a wait whose last call
 * returned before a change (no look before the next one is due).  READY:
 * return MMAPIPC_DUE once, MMAPIPC_READY_NS before a slow regular writer's
 * change is due, and MMAPIPC_SPUN after spinning through its window in vain;
 * a busy wait returns MMAPIPC_DUE after spinning MMAPIPC_WARM_NS.  SIGNALS:
 * the caller runs its signal handlers only when the wait returns (a process of
 * one thread, with a long timeout): signals are held between sleeps, so that
 * one that comes there (a timer's often comes just as a sleep ends) ends the
 * next sleep at once instead of being noticed at the timeout. */
#define MMAPIPC_WAIT_RESUME 1
#define MMAPIPC_WAIT_READY 2
#define MMAPIPC_WAIT_SIGNALS 4
#define MMAPIPC_DUE 2
#define MMAPIPC_SPUN 3
#define MMAPIPC_READY_NS 500000
#define MMAPIPC_WARM_NS 50000

/* Wait up to timeout ns until a load would return a new record: 1, or
 * MMAPIPC_ETIMEDOUT, or MMAPIPC_EINTR when a signal cut a sleep short, or
 * (MMAPIPC_WAIT_READY) MMAPIPC_DUE: the caller's code that takes a change can
 * be run once now, to be in the cache when the change comes; or MMAPIPC_SPUN:
 * a window spun through passed without the change (a signal that came during
 * the spin cut no sleep short: the caller may run its handlers now). */
int mmapipc_wait(mmapipc_channel *ch, int64_t timeout, int flags);

int mmapipc_get_stats(mmapipc_channel *ch, struct mmapipc_stats *out);

/* CDEF END */

#endif
