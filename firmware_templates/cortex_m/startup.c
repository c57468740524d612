/* Cortex-M startup: vector table, reset handler, fault reporting. No vendor SDK.
 * Memory layout symbols come from the generated linker script (firmware.ld). */
#include <stdint.h>
#include <string.h>

#include "ec_board.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, __ec_stack_top;
int ec_device_main(int argc, char **argv);
void ec_fault_report(const uint32_t *frame, uint32_t exc_return);
void SysTick_Handler(void);

#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)

static void enable_fpu(void) {
#if EC_HAS_FPU
  SCB_CPACR |= (0xFu << 20);   /* CP10, CP11 full access (FPU, and MVE on Cortex-M55) */
  __asm volatile("dsb\n isb" ::: "memory");
#endif
}

__attribute__((noreturn)) void Reset_Handler(void) {
  uint32_t *src = &_sidata;
  for (uint32_t *dst = &_sdata; dst < &_edata;) *dst++ = *src++;
  for (uint32_t *dst = &_sbss; dst < &_ebss;) *dst++ = 0;
  enable_fpu();
  /* clock, caches and the cycle counter: ec_hal_init (clock.c), before the UART is set up */
  ec_device_main(0, 0);
  for (;;) __asm volatile("wfi");
}

__attribute__((naked)) void HardFault_Handler(void) {
  __asm volatile(
      "tst lr, #4\n"
      "ite eq\n"
      "mrseq r0, msp\n"
      "mrsne r0, psp\n"
      "mov r1, lr\n"
      "ldr r2, =__ec_stack_top\n"   /* report from a known-good stack */
      "mov sp, r2\n"
      "b ec_fault_report\n");
}

static void Default_Handler(void) { HardFault_Handler(); }

void NMI_Handler(void) __attribute__((weak, alias("Default_Handler")));
void MemManage_Handler(void) __attribute__((weak, alias("Default_Handler")));
void BusFault_Handler(void) __attribute__((weak, alias("Default_Handler")));
void UsageFault_Handler(void) __attribute__((weak, alias("Default_Handler")));
void SVC_Handler(void) __attribute__((weak, alias("Default_Handler")));
void DebugMon_Handler(void) __attribute__((weak, alias("Default_Handler")));
void PendSV_Handler(void) __attribute__((weak, alias("Default_Handler")));

__attribute__((section(".vectors"), used)) void (*const ec_vectors[16])(void) = {
    (void (*)(void))(&__ec_stack_top),
    Reset_Handler,
    NMI_Handler,
    HardFault_Handler,
    MemManage_Handler,
    BusFault_Handler,
    UsageFault_Handler,
    0, 0, 0, 0,
    SVC_Handler,
    DebugMon_Handler,
    0,
    PendSV_Handler,
    SysTick_Handler,
};
