/* mmapipc-corpus: struct input_event ok */
#include <linux/input.h>
