#define MICROPY_HW_BOARD_NAME "meshelect ESP32-S3"
#define MICROPY_HW_MCU_NAME "ESP32-S3"

// A UART REPL too, for modules with a USB-UART bridge (as the port's generic board).
#define MICROPY_HW_ENABLE_UART_REPL (1)

#include "../mpconfigboard_common.h"
