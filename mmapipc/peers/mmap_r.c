/*
 * mmap_r: the C reader of struct STU, as in the original tutorial program.
 * Maps FILE read-only with MAP_SHARED and prints the record every interval.
 * Optional arguments (for tests and the demo):
 *   mmap_r FILE [COUNT [INTERVAL_MS]]   COUNT 0 = forever
 * Like the original, stdout is block-buffered when piped: use COUNT to see it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/stat.h>

struct STU {
    int id;
    char name[20];
    char sex;
};

static void sys_err(const char *str)
{
    perror(str);
    exit(-1);
}

int main(int argc, char *argv[])
{
    int fd;
    struct STU student;
    struct STU *mm;
    long count = 0, interval_ms = 2000, n;

    if (argc < 2) {
        printf("./a.out file_shared\n");
        exit(-1);
    }
    if (argc > 2)
        count = atol(argv[2]);
    if (argc > 3)
        interval_ms = atol(argv[3]);

    fd = open(argv[1], O_RDONLY);
    if (fd == -1)
        sys_err("open error");

    mm = mmap(NULL, sizeof(student), PROT_READ, MAP_SHARED, fd, 0);
    if (mm == MAP_FAILED)
        sys_err("mmap error");

    close(fd);

    for (n = 0; count == 0 || n < count; n++) {
        printf("id=%d\tname=%s\t%c\n", mm->id, mm->name, mm->sex);
        if (count == 0 || n + 1 < count) {
            struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }

    munmap(mm, sizeof(student));
    return 0;
}
