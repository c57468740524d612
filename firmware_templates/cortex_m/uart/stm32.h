/* The STM32 USART driver, shared by both register layouts (uart/stm32_v1.c, uart/stm32_v2.c
 * define UART_ISR, UART_RDR, UART_TDR, UART_BRR, UART_CR1 and UART_CR1_ENABLE, then include this).
 * Clock enables and pin alternate functions come from the target file (ec_board.h). */
#include <stdint.h>

#include "ec_board.h"
#include "ec_uart.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

static const uint32_t rcc_bits[][2] = {EC_UART_RCC};   /* {register, bit} clock enables */
static const uint32_t pins[][3] = {EC_UART_PINS};      /* {GPIO base, pin, alternate function} */

static void gpio_af(uint32_t base, uint32_t pin, uint32_t af) {
  REG(base + 0x00) = (REG(base + 0x00) & ~(3u << (2 * pin))) | (2u << (2 * pin));   /* MODER: AF */
  uint32_t afr = base + (pin < 8 ? 0x20 : 0x24);
  uint32_t shift = 4 * (pin & 7u);
  REG(afr) = (REG(afr) & ~(0xFu << shift)) | (af << shift);
}

void ec_uart_init(uint32_t clock_hz) {
  for (unsigned i = 0; i < sizeof rcc_bits / sizeof rcc_bits[0]; ++i)
    if (rcc_bits[i][0]) REG(rcc_bits[i][0]) |= 1u << rcc_bits[i][1];
  for (unsigned i = 0; i < sizeof pins / sizeof pins[0]; ++i)
    if (pins[i][0]) gpio_af(pins[i][0], pins[i][1], pins[i][2]);
  REG(EC_UART_BASE + UART_BRR) = (clock_hz + EC_UART_BAUD / 2) / EC_UART_BAUD;
  REG(EC_UART_BASE + UART_CR1) = UART_CR1_ENABLE;
}
int ec_uart_rx_ready(void) { return (REG(EC_UART_BASE + UART_ISR) & (1u << 5)) != 0; }
uint8_t ec_uart_rx(void) { return (uint8_t)REG(EC_UART_BASE + UART_RDR); }
void ec_uart_tx(uint8_t c) {
  while (!(REG(EC_UART_BASE + UART_ISR) & (1u << 7))) {
  }
  REG(EC_UART_BASE + UART_TDR) = c;
}
