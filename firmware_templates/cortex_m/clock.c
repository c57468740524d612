/* Core clock, L1 caches and the cycle counter, from the target file's [clock] (ec_board.h).
 *
 * STM32F4/F7/H7 RCC: oscillator on, flash wait states and voltage scale before the clock goes up,
 * PLL configured and locked, system clock switched to it. Every ready-flag poll is bounded
 * (EC_CLOCK_POLL_LIMIT iterations): an emulator that never sets the flag (QEMU's STM32 models do
 * not implement the RCC) leaves the core on its reset clock, and the firmware reports that clock.
 * The counter is DWT CYCCNT when it counts (real cores), SysTick otherwise (QEMU: DWT reads 0). */
#include <stdint.h>

#include "ec_board.h"
#include "ec_clock.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

ec_clock_state ec_clock = {EC_RESET_HZ, EC_CLOCK_SOURCE_NONE, EC_COUNTER_SYSTICK};

#if EC_CLOCK_SETUP
static int wait_set(volatile uint32_t *reg, uint32_t mask) {
  for (uint32_t i = 0; i < EC_CLOCK_POLL_LIMIT; ++i)
    if ((*reg & mask) == mask) return 1;
  return 0;
}

static int wait_value(volatile uint32_t *reg, uint32_t mask, uint32_t value) {
  for (uint32_t i = 0; i < EC_CLOCK_POLL_LIMIT; ++i)
    if ((*reg & mask) == value) return 1;
  return 0;
}

static uint32_t div_bits_ahb(uint32_t d) {   /* HPRE: 0 = /1, 8.. = /2, /4, /8, /16, /64, /128, /256, /512 */
  static const uint16_t v[] = {2, 4, 8, 16, 64, 128, 256, 512};
  for (uint32_t i = 0; i < 8; ++i)
    if (v[i] == d) return 8u + i;
  return 0;
}

static uint32_t div_bits_apb(uint32_t d) {   /* PPRE: 0 = /1, 4 = /2, 5 = /4, 6 = /8, 7 = /16 */
  return d <= 1 ? 0u : d == 2 ? 4u : d == 4 ? 5u : d == 8 ? 6u : 7u;
}
#endif

#if EC_CLOCK_SETUP && (EC_CLOCK_CONTROLLER == EC_STM32F4 || EC_CLOCK_CONTROLLER == EC_STM32F7)
#define RCC_CR REG(0x40023800u)
#define RCC_PLLCFGR REG(0x40023804u)
#define RCC_CFGR REG(0x40023808u)
#define RCC_APB1ENR REG(0x40023840u)
#define PWR_CR REG(0x40007000u)
#define PWR_CSR REG(0x40007004u)
#define FLASH_ACR REG(0x40023C00u)

static int clock_setup(void) {
#if EC_CLOCK_SOURCE_HSE
  RCC_CR |= (1u << 16) | (EC_CLOCK_HSE_BYPASS ? (1u << 18) : 0u);   /* HSEON (HSEBYP) */
  if (!wait_set(&RCC_CR, 1u << 17)) {                                  /* HSERDY */
    RCC_CR &= ~(1u << 16);
    return EC_CLOCK_SOURCE_NO_OSC;
  }
#endif
  RCC_APB1ENR |= 1u << 28;                                             /* PWREN */
  (void)RCC_APB1ENR;
#if EC_CLOCK_VOS
  /* F4 (F405): VOS is bit 14 (1 = scale 1); F7: bits 15:14 (3 = scale 1, 2 = scale 2, 1 = scale 3) */
  PWR_CR = (PWR_CR & ~(3u << 14)) |
           ((EC_CLOCK_CONTROLLER == EC_STM32F4 ? (EC_CLOCK_VOS == 1 ? 1u : 0u) : (4u - EC_CLOCK_VOS)) << 14);
#endif
  RCC_PLLCFGR = (RCC_PLLCFGR & 0xF0000000u) | EC_PLL_M | (EC_PLL_N << 6) | (((EC_PLL_P / 2u) - 1u) << 16) |
                (EC_CLOCK_SOURCE_HSE ? (1u << 22) : 0u) | ((EC_PLL_Q ? EC_PLL_Q : 4u) << 24);
  RCC_CR |= 1u << 24;                                                  /* PLLON */
  if (!wait_set(&RCC_CR, 1u << 25)) {                                  /* PLLRDY */
    RCC_CR &= ~(1u << 24);
    return EC_CLOCK_SOURCE_NO_PLL;
  }
#if EC_CLOCK_OVERDRIVE
  PWR_CR |= 1u << 16;                                                  /* ODEN */
  if (!wait_set(&PWR_CSR, 1u << 16)) return EC_CLOCK_SOURCE_NO_PLL;     /* ODRDY */
  PWR_CR |= 1u << 17;                                                  /* ODSWEN */
  if (!wait_set(&PWR_CSR, 1u << 17)) return EC_CLOCK_SOURCE_NO_PLL;     /* ODSWRDY */
#endif
  /* wait states before the clock goes up; F4: prefetch + I/D caches of the flash, F7: prefetch + ART */
  FLASH_ACR = EC_CLOCK_FLASH_LATENCY | (1u << 8) | (1u << 9) |
              (EC_CLOCK_CONTROLLER == EC_STM32F4 ? (1u << 10) : 0u);
  if (!wait_value(&FLASH_ACR, 0xFu, EC_CLOCK_FLASH_LATENCY)) return EC_CLOCK_SOURCE_NO_PLL;
  RCC_CFGR = (RCC_CFGR & ~((0xFu << 4) | (7u << 10) | (7u << 13))) | (div_bits_ahb(EC_CLOCK_AHB_DIV) << 4) |
             (div_bits_apb(EC_CLOCK_APB1_DIV) << 10) | (div_bits_apb(EC_CLOCK_APB2_DIV) << 13);
  RCC_CFGR = (RCC_CFGR & ~3u) | 2u;                                    /* SW = PLL */
  if (!wait_value(&RCC_CFGR, 3u << 2, 2u << 2)) {                      /* SWS = PLL */
    RCC_CFGR &= ~3u;                                                   /* back to HSI */
    return EC_CLOCK_SOURCE_NO_PLL;
  }
  return EC_CLOCK_SOURCE_PLL;
}
#endif

#if EC_CLOCK_SETUP && EC_CLOCK_CONTROLLER == EC_STM32H7
#define RCC_CR REG(0x58024400u)
#define RCC_CFGR REG(0x58024410u)
#define RCC_D1CFGR REG(0x58024418u)
#define RCC_D2CFGR REG(0x5802441Cu)
#define RCC_D3CFGR REG(0x58024420u)
#define RCC_PLLCKSELR REG(0x58024428u)
#define RCC_PLLCFGR REG(0x5802442Cu)
#define RCC_PLL1DIVR REG(0x58024430u)
#define RCC_APB4ENR REG(0x580244F4u)
#define PWR_CSR1 REG(0x58024804u)
#define PWR_CR3 REG(0x5802480Cu)
#define PWR_D3CR REG(0x58024818u)
#define SYSCFG_PWRCR REG(0x5800042Cu)
#define FLASH_ACR REG(0x52002000u)

static int clock_setup(void) {
  /* supply: LDO on (the Nucleo's default), then voltage scale 1, then VOS0 through SYSCFG's ODEN */
  PWR_CR3 = (PWR_CR3 & ~7u) | (1u << 1);                               /* LDOEN, no bypass; SCUEN cleared */
  if (!wait_set(&PWR_CSR1, 1u << 13)) return EC_CLOCK_SOURCE_NO_PLL;    /* ACTVOSRDY */
  PWR_D3CR = (PWR_D3CR & ~(3u << 14)) | ((EC_CLOCK_VOS == 0 ? 3u : 4u - EC_CLOCK_VOS) << 14);
  if (!wait_set(&PWR_D3CR, 1u << 13)) return EC_CLOCK_SOURCE_NO_PLL;    /* VOSRDY */
#if EC_CLOCK_VOS == 0
  RCC_APB4ENR |= 1u << 1;                                              /* SYSCFGEN */
  (void)RCC_APB4ENR;
  SYSCFG_PWRCR |= 1u;                                                  /* ODEN: VOS0 */
  if (!wait_set(&PWR_D3CR, 1u << 13)) return EC_CLOCK_SOURCE_NO_PLL;
#endif
#if EC_CLOCK_SOURCE_HSE
  RCC_CR |= (1u << 16) | (EC_CLOCK_HSE_BYPASS ? (1u << 18) : 0u);
  if (!wait_set(&RCC_CR, 1u << 17)) {
    RCC_CR &= ~(1u << 16);
    return EC_CLOCK_SOURCE_NO_OSC;
  }
#endif
  RCC_PLLCKSELR = (RCC_PLLCKSELR & ~((3u << 0) | (0x3Fu << 4))) | (EC_CLOCK_SOURCE_HSE ? 2u : 0u) |
                  (EC_PLL_M << 4);
  RCC_PLLCFGR = (RCC_PLLCFGR & ~0xFu & ~(7u << 16)) | (EC_PLL_RGE << 2) | (1u << 16) |
                (EC_PLL_Q ? (1u << 17) : 0u) | (EC_PLL_R ? (1u << 18) : 0u);   /* wide VCO, integer mode */
  RCC_PLL1DIVR = (EC_PLL_N - 1u) | ((EC_PLL_P - 1u) << 9) | (((EC_PLL_Q ? EC_PLL_Q : 2u) - 1u) << 16) |
                 (((EC_PLL_R ? EC_PLL_R : 2u) - 1u) << 24);
  RCC_CR |= 1u << 24;                                                  /* PLL1ON */
  if (!wait_set(&RCC_CR, 1u << 25)) {                                  /* PLL1RDY */
    RCC_CR &= ~(1u << 24);
    return EC_CLOCK_SOURCE_NO_PLL;
  }
  /* wait states (and the programming delay) for the AXI clock before it goes up */
  FLASH_ACR = EC_CLOCK_FLASH_LATENCY | (EC_CLOCK_FLASH_WRHIGHFREQ << 4);
  if (!wait_value(&FLASH_ACR, 0xFu, EC_CLOCK_FLASH_LATENCY)) return EC_CLOCK_SOURCE_NO_PLL;
  RCC_D1CFGR = (div_bits_ahb(EC_CLOCK_AHB_DIV) & 0xFu) | (div_bits_apb(EC_CLOCK_APB1_DIV) << 4);  /* HPRE, D1PPRE */
  RCC_D2CFGR = (div_bits_apb(EC_CLOCK_APB1_DIV) << 4) | (div_bits_apb(EC_CLOCK_APB2_DIV) << 8);
  RCC_D3CFGR = div_bits_apb(EC_CLOCK_APB1_DIV) << 4;
  RCC_CFGR = (RCC_CFGR & ~7u) | 3u;                                    /* SW = PLL1 */
  if (!wait_value(&RCC_CFGR, 7u << 3, 3u << 3)) {
    RCC_CFGR &= ~7u;
    return EC_CLOCK_SOURCE_NO_PLL;
  }
  return EC_CLOCK_SOURCE_PLL;
}
#endif

/* ---------------------------------------------------------------- Cortex-M7 L1 caches */
#define SCB_CCR REG(0xE000ED14u)
#define SCB_CCSIDR REG(0xE000ED80u)
#define SCB_CSSELR REG(0xE000ED84u)
#define SCB_ICIALLU REG(0xE000EF50u)
#define SCB_DCISW REG(0xE000EF60u)

static void caches_on(void) {
#if EC_ENABLE_ICACHE
  __asm volatile("dsb\n isb" ::: "memory");
  SCB_ICIALLU = 0;
  __asm volatile("dsb\n isb" ::: "memory");
  SCB_CCR |= 1u << 17;                                                 /* IC */
  __asm volatile("dsb\n isb" ::: "memory");
#endif
#if EC_ENABLE_DCACHE
  /* invalidate every set and way of the L1 D-cache (its contents are undefined at reset), then on */
  SCB_CSSELR = 0;                                                      /* level 1, data */
  __asm volatile("dsb" ::: "memory");
  uint32_t ccsidr = SCB_CCSIDR;
  uint32_t sets = ((ccsidr >> 13) & 0x7FFFu) + 1u, ways = ((ccsidr >> 3) & 0x3FFu) + 1u;
  for (uint32_t s = 0; s < sets; ++s)
    for (uint32_t w = 0; w < ways; ++w) SCB_DCISW = (s << 5) | (w << 30);   /* 32-byte lines, 4 ways */
  __asm volatile("dsb" ::: "memory");
  SCB_CCR |= 1u << 16;                                                 /* DC */
  __asm volatile("dsb\n isb" ::: "memory");
#endif
}

/* ---------------------------------------------------------------- DWT cycle counter */
#define DEMCR REG(0xE000EDFCu)
#define DWT_CTRL REG(0xE0001000u)
#define DWT_CYCCNT REG(0xE0001004u)
#define DWT_LAR REG(0xE0001FB0u)

static int dwt_counts(void) {
  DEMCR |= 1u << 24;                                                   /* TRCENA */
  DWT_LAR = 0xC5ACCE55u;                                               /* unlock (Cortex-M7) */
  if (DWT_CTRL & (1u << 25)) return 0;                                 /* NOCYCCNT */
  DWT_CYCCNT = 0;
  DWT_CTRL |= 1u;                                                      /* CYCCNTENA */
  uint32_t a = DWT_CYCCNT;
  for (volatile uint32_t i = 0; i < 64u; ++i) {
  }
  return DWT_CYCCNT != a;                                              /* QEMU: reads 0, never advances */
}

static uint32_t dwt_last, dwt_high;

uint64_t ec_clock_dwt_cycles(void) {
  uint32_t primask;
  __asm volatile("mrs %0, primask\n cpsid i" : "=r"(primask)::"memory");
  uint32_t now = DWT_CYCCNT;
  if (now < dwt_last) dwt_high++;                                      /* wrapped since the last read */
  dwt_last = now;
  uint32_t high = dwt_high;
  __asm volatile("msr primask, %0" ::"r"(primask) : "memory");
  return ((uint64_t)high << 32) | now;
}

void ec_clock_init(void) {
#if EC_CLOCK_SETUP
  int source = clock_setup();
  ec_clock.source = (uint8_t)source;
  ec_clock.hz = source == EC_CLOCK_SOURCE_PLL ? EC_CLOCK_SYSCLK_HZ : EC_RESET_HZ;
#endif
  caches_on();
  if (dwt_counts()) ec_clock.counter = EC_COUNTER_DWT;
}

uint32_t ec_clock_tick_hz(void) {
#ifdef EC_EMULATED_TICK_HZ
  return EC_EMULATED_TICK_HZ;    /* the emulated machine's SysTick runs at its own fixed clock */
#else
  return ec_clock.hz;
#endif
}

uint32_t ec_clock_uart_hz(void) {
  return ec_clock.source == EC_CLOCK_SOURCE_PLL ? EC_UART_CLOCK_PLL_HZ : EC_UART_CLOCK_HZ;
}
