/*
 * mmapipc C core: map a file with MAP_SHARED and copy whole records in and
 * out of it under a SIGBUS guard, with a sequence lock in padding bytes.
 *
 * This header is the single source of truth: the cffi build script reads
 * the part between the CDEF markers for its cdef, so C and Python share
 * one declaration of every struct and function.  Functions return a
 * negative MMAPIPC_E* code on failure; MMAPIPC_EOS means errno says why.
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

/* Flags for mmapipc_open. */
#define MMAPIPC_WRITE 1           /* map for writing (creates the file) */
#define MMAPIPC_FOLLOW_SYMLINKS 2 /* the writer may open through a symlink */
#define MMAPIPC_FORCE 4           /* the writer may shrink a longer file */

/* The marker byte that says a sequence lock is kept in the padding. */
#define MMAPIPC_SEQ_MARKER 0xA5

/* One mapped record and the state of its reader or writer. */
struct mmapipc_channel {
    unsigned char *map;       /* the mapping; NULL when closed */
    const char *path;         /* the path it was opened by (kept by the caller) */
    uint64_t dev, ino;        /* the file it maps */
    size_t size;              /* record size in bytes */
    int marker_off;           /* padding byte for the marker, or -1 */
    int seq_off;              /* 2-aligned padding for the 16-bit seq, or -1 */
    int64_t file_size;        /* file size seen at open, -1 if unknown */
    unsigned char *src;       /* writer: the record to store (size bytes) */
    unsigned char *copy;      /* reader: last record returned (size bytes) */
    unsigned char *scratch;   /* reader: work buffers (2 * size bytes) */
    int have;                 /* reader: copy holds a record */
    int verified;             /* reader: 0 last copy by agreement, 1 through the
                                 lock, 2 the lock's sequence has been seen to move */
    int seqlock;              /* writer: keep the sequence lock */
    uint16_t seq;             /* writer: last sequence; reader: seq of copy */
    uint32_t stuck;           /* reader: padding value known to be stuck */
    int stuck_valid;          /* reader: stuck holds a value */
    int64_t stuck_ns;         /* reader: how long an odd seq may last */
    int64_t unstable_ns;      /* reader: how long to try for a stable copy */
    int64_t spin_ns;          /* wait: spin this long after each change */
    int64_t sleep_min_ns;     /* wait: first sleep after the spin */
    int64_t sleep_max_ns;     /* wait: ceiling the sleeps double up to */
    int64_t timeout_ns;       /* wait: give up after this long; < 0 never */
    int busy;                 /* wait: spin instead of sleeping */
    int resume;               /* wait: carry on a wait (no spin, longest sleeps) */
    int predict;              /* wait: nap through a regular writer's period */
    int64_t seen_ns;          /* wait: when the last change was seen */
    int64_t gaps[8];          /* wait: the last gaps between changes seen */
    int ngaps;                /* wait: how many gaps were recorded */
    int64_t size_check_ns;    /* check the file size at most this often */
    int64_t size_checked_ns;  /* when it was last checked */
    uint64_t seqlock_reads;   /* reader: copies accepted by the seq lock */
    uint64_t fallback_reads;  /* reader: copies accepted by agreement */
};

/* Install the SIGBUS handler first in the chain (idempotent, thread-safe). */
int mmapipc_guard_install(void);

/* Open path and map one record; MMAPIPC_WRITE maps it for writing.
 * path must stay valid until the channel is closed. */
int mmapipc_open(struct mmapipc_channel *ch, const char *path, int flags);

/* Unmap; safe to call twice. */
int mmapipc_close(struct mmapipc_channel *ch);

/* msync the record to the file. */
int mmapipc_sync(struct mmapipc_channel *ch);

/* Store ch->src into the mapping (one guarded copy, under the seq lock). */
int mmapipc_store(struct mmapipc_channel *ch);

/* Load a stable copy: 1 if it differs from ch->copy (now updated), 0 if not. */
int mmapipc_load(struct mmapipc_channel *ch);

/* Cheap check: 1 if a load might return a new record (a writer stored since,
 * or the bytes differ), 0 if it would not. */
int mmapipc_poll(struct mmapipc_channel *ch);

/* One guarded copy into ch->scratch, as it is: no stability check. */
int mmapipc_load_raw(struct mmapipc_channel *ch);

/* Wait until mmapipc_load would return 1, then do it; or time out, or
 * return MMAPIPC_EINTR when a signal interrupts a sleep.  Callers wait in
 * slices, so that signal handlers get to run between them. */
int mmapipc_wait(struct mmapipc_channel *ch);

/* CDEF END */

#endif
