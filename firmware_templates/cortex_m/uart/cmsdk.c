/* UART driver: Arm CMSDK APB UART (MPS2/MPS3 boards).
 * DATA 0x0, STATE 0x4 (b0 TX full, b1 RX full), CTRL 0x8 (b0 TX enable, b1 RX enable), BAUDDIV 0x10 */
#include <stdint.h>

#include "ec_board.h"
#include "ec_uart.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

void ec_uart_init(uint32_t clock_hz) {
  REG(EC_UART_BASE + 0x10) = clock_hz / EC_UART_BAUD >= 16 ? clock_hz / EC_UART_BAUD : 16;
  REG(EC_UART_BASE + 0x08) = 0x3u;   /* TX and RX enable: QEMU holds received bytes only with RXEN */
}
int ec_uart_rx_ready(void) { return (REG(EC_UART_BASE + 0x04) & 0x2u) != 0; }
uint8_t ec_uart_rx(void) { return (uint8_t)REG(EC_UART_BASE + 0x00); }
void ec_uart_tx(uint8_t c) {
  while (REG(EC_UART_BASE + 0x04) & 0x1u) {
  }
  REG(EC_UART_BASE + 0x00) = c;
}
