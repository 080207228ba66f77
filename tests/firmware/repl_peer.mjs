// A MicroPython board on a serial line, for `soundmon deploy` tests: the REPL of the real
// MicroPython (npm WebAssembly build) on stdin/stdout, byte for byte, raw REPL included.
// tests/replpeer.py puts it behind a pseudo-terminal, which mpremote opens as a port.
// A soft reset (Ctrl-D) keeps the filesystem, as on a board, and restarts the REPL.
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript/micropython.mjs";

const mp = await loadMicroPython({
  heapsize: 4 * 1024 * 1024,
  linebuffer: false,
  stdout: (bytes) => process.stdout.write(bytes),
  stderr: (bytes) => process.stderr.write(bytes),
});
for (const dir of ["/lib", "/flash"]) {
  try { mp.FS.mkdir(dir); } catch (e) { /* exists */ }
}
// the machine/network test doubles, if given, so `import machine` works as on a board
const doubles = process.argv[2];
if (doubles) {
  const fs = await import("node:fs");
  for (const name of fs.readdirSync(doubles)) {
    if (name.endsWith(".py")) mp.FS.writeFile("/lib/" + name, fs.readFileSync(doubles + "/" + name));
  }
}
// This build's files live in Emscripten's filesystem, whose errno values differ from
// MicroPython's (ENOENT is 44, not 2), and mpremote reads the numbers. A board's LittleFS
// raises MicroPython's: put the same files behind a VFS that translates them.
mp.runPython(`
import sys, vfs

class BoardErrnoVfs:
    ERRNO = {44: 2, 20: 17, 54: 20, 31: 21, 28: 22, 55: 39, 2: 13}

    def __init__(self, fs):
        self.fs = fs

    def __getattr__(self, name):
        method = getattr(self.fs, name)

        def call(*args):
            try:
                return method(*args)
            except OSError as exc:
                raise OSError(self.ERRNO.get(exc.errno, exc.errno))
        return call

root = vfs.VfsPosix("/")
vfs.umount("/")
vfs.mount(BoardErrnoVfs(root), "/")
del root
sys.path.append("/lib")
`);
mp.replInit();

// Raw-paste mode (Ctrl-E A Ctrl-A) would make this build's event-driven REPL wait on a
// blocking read: answer "R\x00" (not supported), as boards before MicroPython 1.14 do, so
// mpremote falls back to the plain raw REPL.
const RAW_PASTE = [0x05, 0x41, 0x01];
let matched = 0;
let queue = Promise.resolve();
process.stdin.on("data", (data) => {
  for (const byte of data) {
    if (byte === RAW_PASTE[matched]) {
      matched += 1;
      if (matched === RAW_PASTE.length) {
        matched = 0;
        queue = queue.then(() => process.stdout.write(Buffer.from("R\x00", "latin1")));
      }
      continue;
    }
    const held = RAW_PASTE.slice(0, matched);
    matched = 0;
    for (const b of [...held, byte]) queue = feed(b);
  }
});

function feed(byte) {
  return queue.then(async () => {
    const result = await mp.replProcessCharWithAsyncify(byte);
    if (result) {  // Ctrl-D: a soft reset; a board comes back in the REPL mode it was in
      process.stdout.write("MPY: soft reboot\r\n");
      mp.replInit();
    }
  });
}
process.stdin.on("end", () => process.exit(0));
