/* mmapipc-corpus: struct stat ok */
#include <sys/stat.h>
