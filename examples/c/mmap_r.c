/*
 * mmap_r on mmapipc_record.h: prints struct STU every two seconds, as the
 * original mmap_r does, but never a torn record (through the sequence lock of
 * a writer on the header or of Python's mmapipc.Writer; from a legacy writer
 * without the lock, when two copies agree).
 *
 *   cc $(mmapipc cflags) -o mmap_r mmap_r.c
 *   ./mmap_r FILE [COUNT [INTERVAL_MS]]      COUNT 0 = forever
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

int main(int argc, char *argv[])
{
    struct STU student;
    long count = argc > 2 ? atol(argv[2]) : 0, interval_ms = argc > 3 ? atol(argv[3]) : 2000;
    mmapipc_rec *r;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [COUNT [INTERVAL_MS]]\n", argv[0]);
        return 2;
    }
    r = mmapipc_rec_open(argv[1], sizeof student, MMAPIPC_STU_MARKER, MMAPIPC_STU_SEQ, 0);
    if (r == NULL) {
        perror(argv[1]);
        return 1;
    }
    for (long n = 0; count == 0 || n < count; n++) {
        if (mmapipc_rec_load(r, &student) != 0) {
            perror("load");
            return 1;
        }
        printf("id=%d\tname=%.20s\t%c\n", student.id, student.name, student.sex);
        fflush(stdout);
        if (count == 0 || n + 1 < count) {
            struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    mmapipc_rec_close(r);
    return 0;
}
