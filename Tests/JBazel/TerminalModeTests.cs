using System.Globalization;
using System.Text;
using Grpc.Core;
using Rbs.Agent.Execution;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.JBazel;

/// <summary>
/// The real jbazel in a real terminal (script(1)'s pseudo-terminal) against a fake agent: raw input mode while the
/// remote terminal has stdin, restored on every way out (compared with `stty -g` before and after), and SIGWINCH sent
/// as a resize frame. The terminal's settings are read from its device while jbazel runs.
/// </summary>
public sealed class TerminalModeTests(ITestOutputHelper output) : IAsyncLifetime, IDisposable
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(30);

    private readonly TempWorkspace _workspace = new();
    private FakeRemote _remote = null!;

    public enum WayOut
    {
        BazelExits,
        AgentFails,
        CtrlCTwice,
        Sigterm,
        Sighup,
        BrokenPipe,
    }

    public async Task InitializeAsync() => _remote = await FakeRemote.StartAsync(output);

    public async Task DisposeAsync() => await _remote.DisposeAsync();

    public void Dispose() => _workspace.Dispose();

    [SkippableTheory]
    [InlineData(WayOut.BazelExits, 0)]
    [InlineData(WayOut.AgentFails, 38)]
    [InlineData(WayOut.CtrlCTwice, 8)]
    [InlineData(WayOut.Sigterm, 8)]
    [InlineData(WayOut.Sighup, 129)]
    [InlineData(WayOut.BrokenPipe, 141)]
    public async Task KeystrokesGoRawWhileTheCommandRunsAndTheTerminalIsRestoredOnEveryWayOut(WayOut wayOut, int expectedExit)
    {
        Skip.IfNot(File.Exists("/usr/bin/script"), "script(1) (util-linux) is missing: no pseudo-terminal to test with");
        var typed = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        var firstInterrupt = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _remote.Execute = async call =>
        {
            var chunk = await call.StdinChunks.Reader.ReadAsync(call.Aborted);
            typed.TrySetResult(chunk);
            switch (wayOut)
            {
                case WayOut.BazelExits:
                    await call.ExitAsync(0);
                    break;
                case WayOut.AgentFails:
                    throw new RpcException(new Status(StatusCode.Unavailable, "the agent went away"));
                case WayOut.CtrlCTwice:
                    // Like a wedged agent: the first interrupt changes nothing; the second Ctrl-C leaves at once.
                    await call.Interrupts.Reader.ReadAsync(call.Aborted);
                    firstInterrupt.TrySetResult();
                    await call.ClientGone;
                    break;
                case WayOut.Sigterm:
                    await call.Interrupts.Reader.ReadAsync(call.Aborted);
                    await call.ExitAsync(8);
                    break;
                case WayOut.Sighup:
                    await call.ClientGone;
                    break;
                case WayOut.BrokenPipe:
                    var block = new byte[64 * 1024];
                    while (!call.Aborted.IsCancellationRequested)
                    {
                        await call.StdoutAsync(block);
                    }

                    break;
            }
        };

        var before = Path.Combine(_workspace.Base, "stty.before");
        var after = Path.Combine(_workspace.Base, "stty.after");
        var exitFile = Path.Combine(_workspace.Base, "jbazel.rc");
        await using var script = JBazelProcess.Start(
            output,
            _workspace.Root,
            _workspace.Home,
            new Dictionary<string, string?> { ["RBS_ORCHESTRATOR"] = _remote.Address.ToString(), ["TERM"] = "xterm" },
            ["build", "//..."],
            pseudoTerminal: true,
            shellCommand: jbazel => wayOut == WayOut.BrokenPipe
                ? $"stty -g > {before}; {{ {jbazel}; echo $? > {exitFile}; }} | head -c 5 > /dev/null; stty -g > {after}"
                : $"stty -g > {before}; {jbazel}; echo $? > {exitFile}; stty -g > {after}");

        var jbazel = await FindJBazelAsync(script.Id);
        var terminal = TerminalOf(jbazel);
        var raw = await WaitForTerminalAsync(terminal, flags => (flags.Local & Icanon) == 0);
        // Raw input, but output processing and signals stay local.
        Assert.Equal(0u, raw.Local & Echo);
        Assert.NotEqual(0u, raw.Local & Isig);
        Assert.NotEqual(0u, raw.Output & Opost);

        // One key without Enter reaches the agent at once: no local line buffering.
        await script.StandardInput.WriteAsync("x"u8.ToArray());
        await script.StandardInput.FlushAsync();
        Assert.Equal("x"u8.ToArray(), await typed.Task.WaitAsync(s_timeout));

        switch (wayOut)
        {
            case WayOut.CtrlCTwice:
                await TypeAsync(script, "\u0003");
                await firstInterrupt.Task.WaitAsync(s_timeout);
                await TypeAsync(script, "\u0003");
                break;
            case WayOut.Sigterm:
                Assert.Equal(0, Native.kill(jbazel, Native.SIGTERM));
                break;
            case WayOut.Sighup:
                Assert.Equal(0, Native.kill(jbazel, Native.SIGHUP));
                break;
            default:
                break;
        }

        Assert.Equal(0, await script.WaitForExitAsync(s_timeout));
        Assert.Equal(expectedExit.ToString(CultureInfo.InvariantCulture), File.ReadAllText(exitFile).Trim());
        var saved = File.ReadAllText(before).Trim();
        Assert.NotEqual("", saved);
        Assert.Equal(saved, File.ReadAllText(after).Trim());
    }

    [SkippableFact]
    public async Task AWindowSizeChangeIsSentAsAResizeFrame()
    {
        Skip.IfNot(File.Exists("/usr/bin/script"), "script(1) (util-linux) is missing: no pseudo-terminal to test with");
        var resized = new TaskCompletionSource<Resize>(TaskCreationOptions.RunContinuationsAsynchronously);
        _remote.Execute = async call =>
        {
            resized.TrySetResult(await call.Resizes.Reader.ReadAsync(call.Aborted));
            await call.ExitAsync(0);
        };

        await using var script = JBazelProcess.Start(
            output,
            _workspace.Root,
            _workspace.Home,
            new Dictionary<string, string?> { ["RBS_ORCHESTRATOR"] = _remote.Address.ToString(), ["TERM"] = "xterm" },
            ["build", "//..."],
            pseudoTerminal: true);
        var jbazel = await FindJBazelAsync(script.Id);
        var terminal = TerminalOf(jbazel);
        // SIGWINCH is handled from the moment raw mode is on.
        await WaitForTerminalAsync(terminal, flags => (flags.Local & Icanon) == 0);

        // What a terminal emulator does when its window changes; the kernel sends jbazel SIGWINCH.
        SetWindowSize(terminal, columns: 77, rows: 22);

        var resize = await resized.Task.WaitAsync(s_timeout);
        Assert.Equal((77, 22), (resize.Columns, resize.Rows));
        Assert.Equal(0, await script.WaitForExitAsync(s_timeout));
        var start = Assert.Single(_remote.AgentCalls).Start;
        Assert.True(start.Terminal.StderrIsTty && start.Terminal.StdinIsTty, start.Terminal.ToString());
    }

    private const uint Icanon = 0x2;
    private const uint Echo = 0x8;
    private const uint Isig = 0x1;
    private const uint Opost = 0x1;

    private static async Task TypeAsync(JBazelProcess script, string text)
    {
        await script.StandardInput.WriteAsync(Encoding.UTF8.GetBytes(text));
        await script.StandardInput.FlushAsync();
    }

    /// <summary>jbazel below script(1) (script → shell → jbazel).</summary>
    private static async Task<int> FindJBazelAsync(int scriptPid)
    {
        var deadline = DateTime.UtcNow + s_timeout;
        while (DateTime.UtcNow < deadline)
        {
            foreach (var pid in ProcessTree.Descendants(scriptPid))
            {
                try
                {
                    if (File.ReadAllText($"/proc/{pid}/comm").Trim() == "jbazel")
                    {
                        return pid;
                    }
                }
                catch (IOException)
                {
                }
            }

            await Task.Delay(20);
        }

        throw new TimeoutException("jbazel did not start below script(1)");
    }

    private static string TerminalOf(int pid) => new FileInfo($"/proc/{pid}/fd/0").LinkTarget!;

    private static async Task<(uint Output, uint Local)> WaitForTerminalAsync(string device, Func<(uint Output, uint Local), bool> condition)
    {
        var deadline = DateTime.UtcNow + s_timeout;
        while (true)
        {
            var flags = ReadFlags(device);
            if (condition(flags))
            {
                return flags;
            }

            Assert.True(DateTime.UtcNow < deadline, $"the terminal's settings never matched (c_oflag {flags.Output:x}, c_lflag {flags.Local:x})");
            await Task.Delay(20);
        }
    }

    private static unsafe (uint Output, uint Local) ReadFlags(string device)
    {
        var fd = OpenTerminal(device);
        try
        {
            var termios = stackalloc byte[Native.TermiosSize];
            Assert.Equal(0, Native.tcgetattr(fd, termios));
            return (*(uint*)(termios + 4), *(uint*)(termios + 12));
        }
        finally
        {
            Native.close(fd);
        }
    }

    private static unsafe void SetWindowSize(string device, int columns, int rows)
    {
        var fd = OpenTerminal(device);
        try
        {
            var size = new Native.WindowSize { Columns = (ushort)columns, Rows = (ushort)rows };
            Assert.Equal(0, Native.ioctl(fd, Native.TIOCSWINSZ, &size));
        }
        finally
        {
            Native.close(fd);
        }
    }

    private static unsafe int OpenTerminal(string device)
    {
        var path = Encoding.UTF8.GetBytes(device + "\0");
        fixed (byte* pointer = path)
        {
            var fd = Native.open(pointer, Native.O_RDWR | Native.O_NOCTTY | Native.O_CLOEXEC);
            Assert.True(fd >= 0, $"cannot open {device}");
            return fd;
        }
    }
}
