/*
 * mmap_w on mmapipc_record.h: stores struct STU {10, "xiaoming", 'm'} every
 * second with id++, under mmapipc's sequence lock, and wakes the waiters.
 * Readers never see a torn record: mmap_r below, or Python's mmapipc.Reader.
 *
 *   cc $(mmapipc cflags) -o mmap_w mmap_w.c
 *   ./mmap_w FILE [COUNT [INTERVAL_MS]]      COUNT 0 = forever
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "mmapipc_record.h"

struct STU {
    int id;
    char name[20];
    char sex;
};

_Static_assert(sizeof(struct STU) == MMAPIPC_STU_SIZE, "struct STU is 28 bytes");

int main(int argc, char *argv[])
{
    struct STU student = {10, "xiaoming", 'm'};
    long count = argc > 2 ? atol(argv[2]) : 0, interval_ms = argc > 3 ? atol(argv[3]) : 1000;
    mmapipc_rec *r;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [COUNT [INTERVAL_MS]]\n", argv[0]);
        return 2;
    }
    r = mmapipc_rec_open(argv[1], sizeof student, MMAPIPC_STU_MARKER, MMAPIPC_STU_SEQ,
                         MMAPIPC_REC_WRITE);
    if (r == NULL) {
        perror(argv[1]);
        return 1;
    }
    for (long n = 0; count == 0 || n < count; n++) {
        if (mmapipc_rec_store(r, &student) != 0) {
            perror("store");
            return 1;
        }
        student.id++;
        if (count == 0 || n + 1 < count) {
            struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    mmapipc_rec_close(r);
    return 0;
}
