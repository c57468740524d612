/* Core clock, caches and cycle counter of a Cortex-M board (clock.c), set up before the UART. */
#ifndef EC_CLOCK_H
#define EC_CLOCK_H

#include <stdint.h>

#include "ec_hal.h"   /* EC_COUNTER_*, EC_CLOCK_SOURCE_* */

#define EC_STM32F4 1
#define EC_STM32F7 2
#define EC_STM32H7 3

typedef struct {
  uint32_t hz;          /* the core clock the firmware runs at */
  uint8_t source;       /* EC_CLOCK_SOURCE_*: PLL, or why it stayed on the reset clock */
  uint8_t counter;      /* EC_COUNTER_DWT or EC_COUNTER_SYSTICK */
} ec_clock_state;

extern ec_clock_state ec_clock;

void ec_clock_init(void);           /* clock tree, caches, DWT probe */
uint32_t ec_clock_tick_hz(void);    /* the rate of the cycle counter */
uint32_t ec_clock_uart_hz(void);    /* the UART's input clock now */
uint64_t ec_clock_dwt_cycles(void); /* CYCCNT extended to 64 bits (read at least once per 2^32 cycles) */

#endif
