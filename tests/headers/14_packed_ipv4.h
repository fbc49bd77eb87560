/* mmapipc-corpus: struct ipv4 size=20 align=1 */
#include <stdint.h>
struct __attribute__((packed)) ipv4 {
    uint8_t ver_ihl; uint8_t tos; uint16_t total_len; uint16_t id; uint16_t frag;
    uint8_t ttl; uint8_t proto; uint16_t csum; uint32_t src; uint32_t dst;
};
