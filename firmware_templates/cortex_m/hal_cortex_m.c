/* Cortex-M platform layer: the byte stream over the UART driver (uart/<driver>.c), SysTick
 * clock, stack painting, arena/stack facts from the linker script, fault reports over the UART. */
#include <stdint.h>

#include "ec_board.h"
#include "ec_clock.h"
#include "ec_hal.h"
#include "ec_protocol.h"
#include "ec_uart.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

/* ---------------------------------------------------------------- counter: DWT CYCCNT or SysTick */
#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define SYST_CVR REG(0xE000E018u)
static volatile uint32_t systick_wraps;

void SysTick_Handler(void) {
  systick_wraps++;
  if (ec_clock.counter == EC_COUNTER_DWT) (void)ec_clock_dwt_cycles();   /* sees every CYCCNT wrap */
}

static void systick_init(void) {
  SYST_RVR = 0x00FFFFFFu;
  SYST_CVR = 0;
  SYST_CSR = 0x7u;   /* processor clock, interrupt on wrap, enable */
  while (SYST_CVR == 0) {   /* QEMU: the counter starts on the next tick */
  }
}

uint64_t ec_hal_ticks(void) {
  if (ec_clock.counter == EC_COUNTER_DWT) return ec_clock_dwt_cycles();
  uint32_t wraps, cvr;
  do {
    wraps = systick_wraps;
    cvr = SYST_CVR;
  } while (wraps != systick_wraps);
  return ((uint64_t)wraps << 24) + (0x00FFFFFFu - cvr);
}

uint32_t ec_hal_tick_hz(void) { return ec_clock_tick_hz(); }
const char *ec_hal_tick_unit(void) { return "cycles"; }
uint32_t ec_hal_clock_hz(void) { return ec_clock.hz; }
uint8_t ec_hal_clock_source(void) { return ec_clock.source; }
uint8_t ec_hal_counter(void) { return ec_clock.counter; }

/* ---------------------------------------------------------------- byte stream */
void ec_hal_init(int argc, char **argv) {
  (void)argc;
  (void)argv;
  ec_clock_init();                 /* PLL (bounded waits), caches, DWT probe: before the UART's baud */
  ec_uart_init(ec_clock_uart_hz());
  systick_init();
}

int ec_hal_getc(uint32_t timeout_ms) {
  uint64_t start = ec_hal_ticks();
  uint64_t limit = (uint64_t)timeout_ms * (ec_hal_tick_hz() / 1000u);
  while (!ec_uart_rx_ready()) {
    if (timeout_ms && ec_hal_ticks() - start > limit) return -1;
  }
  return ec_uart_rx();
}

void ec_hal_write(const uint8_t *data, size_t n) {
  for (size_t i = 0; i < n; ++i) ec_uart_tx(data[i]);
}

/* ---------------------------------------------------------------- stack and arena */
extern uint32_t __ec_stack_bottom, __ec_stack_top, __ec_arena_start, __ec_arena_end;
#define STACK_PAINT 0xC0FFEE11u

void ec_hal_stack_paint(void) {
  uint32_t sp;
  __asm volatile("mov %0, sp" : "=r"(sp));
  for (volatile uint32_t *p = &__ec_stack_bottom; (uint32_t)p < sp - 64u; ++p) *p = STACK_PAINT;
}

uint32_t ec_hal_stack_used(void) {
  const uint32_t *p = &__ec_stack_bottom;
  while (p < &__ec_stack_top && *p == STACK_PAINT) ++p;
  return (uint32_t)((uintptr_t)&__ec_stack_top - (uintptr_t)p);
}

uint32_t ec_hal_stack_bytes(void) {
  return (uint32_t)((uintptr_t)&__ec_stack_top - (uintptr_t)&__ec_stack_bottom);
}

uint32_t ec_hal_arena_bytes(void) {
  return (uint32_t)((uintptr_t)&__ec_arena_end - (uintptr_t)&__ec_arena_start);
}

/* ---------------------------------------------------------------- faults */
static void put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = (uint8_t)(v >> (8 * i));
}

__attribute__((noreturn, used)) void ec_fault_report(const uint32_t *frame, uint32_t exc_return) {
  /* frame: r0 r1 r2 r3 r12 lr pc xpsr, then the fault status registers */
  uint8_t payload[13 * 4];
  for (int i = 0; i < 8; ++i) put_u32(payload + 4 * i, frame[i]);
  put_u32(payload + 32, REG(0xE000ED28u));   /* CFSR */
  put_u32(payload + 36, REG(0xE000ED2Cu));   /* HFSR */
  put_u32(payload + 40, REG(0xE000ED34u));   /* MMFAR */
  put_u32(payload + 44, REG(0xE000ED38u));   /* BFAR */
  put_u32(payload + 48, exc_return);
  uint8_t head[EC_HEADER_BYTES], tail[4];
  ec_frame_header(head, EC_MSG_FAULT, 0, sizeof payload);
  uint32_t crc = ec_frame_crc(EC_MSG_FAULT, 0, sizeof payload, payload);
  put_u32(tail, crc);
  ec_hal_write(head, sizeof head);
  ec_hal_write(payload, sizeof payload);
  ec_hal_write(tail, sizeof tail);
  for (;;) __asm volatile("wfi");
}


/* The instruction count comes from SysTick under -icount; the marker only keeps the interface. */
__attribute__((noinline, used)) void ec_hal_mark(void) { __asm volatile("" ::: "memory"); }
