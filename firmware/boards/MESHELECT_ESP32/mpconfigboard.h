#define MICROPY_HW_BOARD_NAME "meshelect ESP32"
#define MICROPY_HW_MCU_NAME "ESP32"

#include "../mpconfigboard_common.h"
