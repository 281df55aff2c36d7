"""meshelect's labgrid drivers; importing this package registers them (and the resources in
``hil.resources``) with labgrid's target factory. Environment files say so with
``imports: [hil.drivers]``.

| driver | binds | does |
|---|---|---|
| ``VirtualBenchDriver`` | ``VirtualBench`` | builds a virtual bench (namespaces, gateway, broker) |
| ``MicroPythonUnixDriver`` | ``MicroPythonUnixPort`` | a virtual board: flash (erase), power, console |
| ``EsptoolDriver`` | a serial port | flashes MicroPython with esptool |
| ``MeshDeployDriver`` | a serial port or ``MicroPythonUnixDriver`` | deploys the firmware and the node's config |
| ``MeshConsoleDriver`` | any ``ConsoleProtocol`` | the firmware's status lines |
| ``MeshGatewayDriver`` | ``MeshGateway`` | the gateway's HTTP API |
| ``MeshBrokerDriver`` | ``MeshBroker`` | restarts the MQTT broker |
| ``MeshAgentDriver`` | ``CommandProtocol`` (labgrid's ``SSHDriver``) | installs and runs ``meshelect agent`` on a Pi |

The strategy (``hil.strategy.MeshNodeStrategy``) is registered here too.
"""

from hil import resources as resources
from hil import strategy as strategy
from hil.drivers import agent as agent
from hil.drivers import bench as bench
from hil.drivers import broker as broker
from hil.drivers import console as console
from hil.drivers import firmware as firmware
from hil.drivers import gateway as gateway
from hil.drivers import unixboard as unixboard
from hil.drivers.common import HilError as HilError
from hil.drivers.common import HilTimeout as HilTimeout
