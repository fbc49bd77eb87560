/*
 * mmap_w: the C writer of struct STU, as in the original tutorial program.
 * Maps FILE with MAP_SHARED and memcpy()s the whole struct into it, id++,
 * then sleeps.  Optional arguments (for tests and the demo):
 *   mmap_w FILE [COUNT [INTERVAL_MS [NAME [ID [SEX]]]]]   COUNT 0 = forever
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>

struct STU {
    int id;
    char name[20];
    char sex;
};

static void sys_err(const char *str)
{
    perror(str);
    exit(1);
}

int main(int argc, char *argv[])
{
    int fd;
    struct STU student = {10, "xiaoming", 'm'};
    struct STU *mm;
    long count = 0, interval_ms = 1000, n;

    if (argc < 2) {
        printf("./a.out file_shared\n");
        exit(-1);
    }
    if (argc > 2)
        count = atol(argv[2]);
    if (argc > 3)
        interval_ms = atol(argv[3]);
    if (argc > 4) {
        size_t len = strlen(argv[4]);   /* may fill all 20, with no NUL */
        memset(student.name, 0, sizeof student.name);
        memcpy(student.name, argv[4], len < sizeof student.name ? len : sizeof student.name);
    }
    if (argc > 5)
        student.id = atoi(argv[5]);
    if (argc > 6)
        student.sex = argv[6][0];

    fd = open(argv[1], O_RDWR | O_CREAT, 0664);
    ftruncate(fd, sizeof(student));

    mm = mmap(NULL, sizeof(student), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mm == MAP_FAILED)
        sys_err("mmap");

    close(fd);

    for (n = 0; count == 0 || n < count; n++) {
        memcpy(mm, &student, sizeof(student));
        student.id++;
        if (count == 0 || n + 1 < count) {
            struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }

    munmap(mm, sizeof(student));
    return 0;
}
