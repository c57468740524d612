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
/* What the counter is and which clock the device runs at (INFO and the TIMING frame report them). */
#define EC_COUNTER_SYSTICK 1      /* SysTick on the core clock (emulators: QEMU's fixed machine clock) */
#define EC_COUNTER_DWT 2          /* DWT CYCCNT: core cycles (real Cortex-M3/M4/M7/M55) */
#define EC_COUNTER_OS 3           /* the operating system's monotonic clock, ns */
#define EC_CLOCK_SOURCE_NONE 0    /* no clock set-up: the reset clock, or an emulated machine's clock */
#define EC_CLOCK_SOURCE_PLL 1     /* the PLL of the target file's [clock] locked: sysclk_hz */
#define EC_CLOCK_SOURCE_NO_OSC 2  /* the oscillator never got ready: still on the reset clock */
#define EC_CLOCK_SOURCE_NO_PLL 3  /* the PLL (or a regulator step) never got ready: still on the reset clock */
#define EC_CLOCK_SOURCE_OS 4      /* managed by the operating system */
uint32_t ec_hal_clock_hz(void);                  /* core clock now (0 = unknown) */
uint8_t ec_hal_clock_source(void);               /* EC_CLOCK_SOURCE_* */
uint8_t ec_hal_counter(void);                    /* EC_COUNTER_*: what ec_hal_ticks counts */
void ec_hal_mark(void);                          /* called right before and after each inference:
                                                    an emulator plugin counts instructions between */

#endif
