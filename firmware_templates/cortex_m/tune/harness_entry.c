/* Bare-metal entry of a kernel's measuring program (edgecompile tune, Cortex-M under
 * qemu-system-arm -icount): vector table, reset, SysTick, and the two marker calls of the
 * harness's main(): the SysTick count between them is printed through semihosting
 * ("EC_TICKS <n>"), then the program exits through semihosting. No UART, no vendor SDK.
 * The memory layout symbols come from the generated linker script. */
#include <stdint.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, __ec_stack_top;
int main(void);

#define REG(addr) (*(volatile uint32_t *)(addr))
#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define SYST_CVR REG(0xE000E018u)
#define SCB_CPACR REG(0xE000ED88u)

static volatile uint32_t wraps;
static uint64_t marks[2];
static uint32_t nmarks;

void SysTick_Handler(void) { wraps++; }

static uint64_t ticks(void) {
  uint32_t w, cvr;
  do {
    w = wraps;
    cvr = SYST_CVR;
  } while (w != wraps);
  return ((uint64_t)w << 24) + (0x00FFFFFFu - cvr);
}

static int semihost(int op, const void *arg) {
  register int r0 __asm__("r0") = op;
  register const void *r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

/* SYS_EXIT: ADP_Stopped_ApplicationExit (QEMU exits with status 0) or ADP_Stopped_RunTimeError */
static __attribute__((noreturn)) void finish(uint32_t failed) {
  semihost(0x18, (const void *)(uintptr_t)(failed ? 0x20023u : 0x20026u));
  for (;;) {
  }
}

static void print(const char *s) { semihost(0x04, s); }   /* SYS_WRITE0 */

static void print_u64(uint64_t v) {
  char buf[24];
  int i = 23;
  buf[i] = 0;
  do {
    buf[--i] = (char)('0' + v % 10u);
    v /= 10u;
  } while (v && i > 0);
  print(buf + i);
}

/* called by the harness right before and right after the measured kernel call */
__attribute__((noinline, used)) void ec_hal_mark(void) {
  if (nmarks < 2) marks[nmarks++] = ticks();
}

__attribute__((noreturn)) void Reset_Handler(void) {
  uint32_t *src = &_sidata;
  for (uint32_t *dst = &_sdata; dst < &_edata;) *dst++ = *src++;
  for (uint32_t *dst = &_sbss; dst < &_ebss;) *dst++ = 0;
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
  SCB_CPACR |= (0xFu << 20);   /* FPU (and MVE) access */
  __asm__ volatile("dsb\n isb" ::: "memory");
#endif
  SYST_RVR = 0x00FFFFFFu;
  SYST_CVR = 0;
  SYST_CSR = 0x7u;             /* processor clock, interrupt on wrap, enable */
  while (SYST_CVR == 0) {      /* QEMU: the counter starts on the next tick */
  }
  main();
  if (nmarks < 2) {
    print("EC_ERROR no marker calls\n");
    finish(1);
  }
  print("EC_TICKS ");
  print_u64(marks[1] - marks[0]);
  print("\n");
  finish(0);
}

static void Fault_Handler(void) {
  print("EC_ERROR fault\n");
  finish(1);
}

__attribute__((section(".vectors"), used)) void (*const ec_vectors[16])(void) = {
    (void (*)(void))(&__ec_stack_top), Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, 0, 0, 0, 0, Fault_Handler, Fault_Handler, 0, Fault_Handler, SysTick_Handler,
};
