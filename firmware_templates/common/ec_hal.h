/* What the device loop needs from a platform: a byte stream, a clock, stack and arena facts.
 * cortex_m/hal_cortex_m.c and linux/hal_linux.c implement it. */
#ifndef EC_HAL_H
#define EC_HAL_H

#include <stddef.h>
#include <stdint.h>

void ec_hal_init(int argc, char **argv);
int ec_hal_getc(uint32_t timeout_ms);            /* a byte, or -1 after timeout_ms (0 = wait forever) */
void ec_hal_write(const uint8_t *data, size_t n);
uint64_t ec_hal_ticks(void);                     /* free-running counter */
uint32_t ec_hal_tick_hz(void);                   /* its rate */
const char *ec_hal_tick_unit(void);              /* "cycles" (SysTick on the core clock) or "ns" */
void ec_hal_stack_paint(void);                   /* fill the unused stack with a pattern */
uint32_t ec_hal_stack_used(void);                /* deepest stack use since the last paint, bytes */
uint32_t ec_hal_arena_bytes(void);               /* size of the arena as linked */
uint32_t ec_hal_stack_bytes(void);               /* stack reserved for the program (0 = OS managed) */
void ec_hal_mark(void);                          /* called right before and after each inference:
                                                    an emulator plugin counts instructions between */

#endif
