/* mmapipc-corpus: struct sockaddr_in size=16 */
#include <netinet/in.h>
