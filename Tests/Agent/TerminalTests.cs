using System.Text;
using Google.Protobuf;
using Grpc.Core;
using Rbs.V1;
using static Rbs.Tests.Agent.ExecuteCommandTests;

namespace Rbs.Tests.Agent;

/// <summary>
/// Commands whose client runs in a terminal: the agent gives the tool a real pseudo-terminal (controlling terminal,
/// stderr, and stdin/stdout only when the client's are terminals), forwards resizes, and keeps pipes otherwise.
/// </summary>
public sealed class TerminalTests(ITestOutputHelper output)
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task WithStderrOnATerminalTheToolGetsAPseudoTerminalAsControllingTerminalAndStderrOnly()
    {
        await using var agent = await TestAgent.StartAsync(output);
        var start = OnTerminal(Start("tty-report"), stdin: false, stdout: false, columns: 123, rows: 45);

        var result = await agent.RunAsync(start, s_timeout);

        output.WriteLine(result.StderrText);
        Assert.Equal(0, result.Exit?.Code);
        // stdout stays a pipe (a redirected `jbazel run //x > file`), stdin too; stderr is the terminal.
        Assert.Contains("fd0=pipe fd1=pipe fd2=tty ctty=yes session-leader=yes sighup=ignored size=45 123", result.StderrText, StringComparison.Ordinal);
        Assert.Equal(0, result.Stdout.Length);
    }

    [Fact]
    public async Task WithEveryStreamOnATerminalAllThreeAreThePseudoTerminal()
    {
        await using var agent = await TestAgent.StartAsync(output);
        var start = OnTerminal(Start("tty-report"), stdin: true, stdout: true, columns: 80, rows: 24);

        var result = await agent.RunAsync(start, s_timeout);

        Assert.Equal(0, result.Exit?.Code);
        Assert.Contains("fd0=tty fd1=tty fd2=tty ctty=yes session-leader=yes sighup=ignored size=24 80", result.StderrText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task WithoutATerminalTheToolKeepsPipesAndItsOwnProcessGroup()
    {
        await using var agent = await TestAgent.StartAsync(output);
        var start = Start("tty-report");
        // stdin and stdout on a terminal but stderr redirected: no pseudo-terminal, as today.
        start.Terminal = new TerminalInfo { StdinIsTty = true, StdoutIsTty = true, StderrIsTty = false, Columns = 100, Rows = 30 };

        var result = await agent.RunAsync(start, s_timeout);

        Assert.Equal(0, result.Exit?.Code);
        Assert.Contains("fd0=pipe fd1=pipe fd2=pipe ctty=no session-leader=no sighup=default size=none", result.StderrText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task TerminalOutputArrivesUntranslatedAndStdoutStaysAByteExactPipe()
    {
        await using var agent = await TestAgent.StartAsync(output);
        var stdoutBytes = new byte[300_000];
        new Random(11).NextBytes(stdoutBytes);
        // Text with bare LFs, CRLFs and escape sequences: a terminal with output post-processing would add CRs.
        var terminalText = string.Concat(Enumerable.Range(0, 5000).Select(i => $"\u001b[32mINFO:\u001b[0m line {i}\n\r\n"));
        var stdoutFile = Path.Combine(agent.Workspace, "out.bin");
        var stderrFile = Path.Combine(agent.Workspace, "err.txt");
        await File.WriteAllBytesAsync(stdoutFile, stdoutBytes);
        await File.WriteAllTextAsync(stderrFile, terminalText);

        var result = await agent.RunAsync(OnTerminal(Start("two-files", stdoutFile, stderrFile), stdin: false, stdout: false), s_timeout);

        Assert.Equal(0, result.Exit?.Code);
        Assert.Equal(stdoutBytes, result.Stdout.ToArray());
        // Everything the tool wrote before it exited, and exactly that: EOF on the terminal loses nothing.
        Assert.Equal(terminalText, result.StderrText);
    }

    [Fact]
    public async Task ResizeFramesReachTheToolAsSigwinchWithTheNewSize()
    {
        await using var agent = await TestAgent.StartAsync(output);
        using var cts = new CancellationTokenSource(s_timeout);
        using var call = await agent.StartCommandAsync(OnTerminal(Start("winch"), stdin: true, stdout: true, columns: 120, rows: 40), cts.Token);
        var result = new CommandResult();
        await ReadUntilStderrContainsAsync(call, result, "ready size 40 120\n", cts.Token);

        await call.RequestStream.WriteAsync(new ClientFrame { Resize = new Resize { Columns = 90, Rows = 33 } }, cts.Token);
        await ReadUntilStderrContainsAsync(call, result, "size 33 90\n", cts.Token);

        // Not a window size: ignored, and the command goes on.
        await call.RequestStream.WriteAsync(new ClientFrame { Resize = new Resize { Columns = -1, Rows = 70000 } }, cts.Token);
        await call.RequestStream.WriteAsync(new ClientFrame { Resize = new Resize { Columns = 100, Rows = 30 } }, cts.Token);
        await ReadUntilStderrContainsAsync(call, result, "size 30 100\n", cts.Token);

        await call.RequestStream.WriteAsync(new ClientFrame { Interrupt = new Interrupt() }, cts.Token);
        await foreach (var frame in call.ResponseStream.ReadAllAsync(cts.Token))
        {
            result.Add(frame);
        }

        Assert.NotNull(result.Exit);
        Assert.DoesNotContain("size 65535", result.StderrText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task KeystrokesOnTheTerminalAreEchoedAndReadAsALineAsInALocalTerminal()
    {
        await using var agent = await TestAgent.StartAsync(output);
        using var cts = new CancellationTokenSource(s_timeout);
        using var call = await agent.StartCommandAsync(OnTerminal(Start("read-line"), stdin: true, stdout: true), cts.Token);

        // A raw laptop terminal sends Enter as CR; the agent's line discipline makes it the end of the line (ICRNL).
        await call.RequestStream.WriteAsync(new ClientFrame { Stdin = ByteString.CopyFromUtf8("héllo wörld\r") }, cts.Token);
        var result = await CommandResult.ReadToEndAsync(call, cts.Token).WaitAsync(s_timeout);

        Assert.Equal(0, result.Exit?.Code);
        // The echo (what the user sees typing) comes from the remote terminal, then the tool's output.
        Assert.Equal("héllo wörld\ngot [héllo wörld]\n", result.StderrText);
    }

    [Fact]
    public async Task StdinEofOnATerminalIsTheEndOfFileCharacter()
    {
        await using var agent = await TestAgent.StartAsync(output);
        using var cts = new CancellationTokenSource(s_timeout);
        using var call = await agent.StartCommandAsync(OnTerminal(Start("cat"), stdin: true, stdout: true), cts.Token);

        await call.RequestStream.WriteAsync(new ClientFrame { Stdin = ByteString.CopyFromUtf8("abc\r") }, cts.Token);
        await call.RequestStream.WriteAsync(new ClientFrame { StdinEof = new StdinEof() }, cts.Token);
        var result = await CommandResult.ReadToEndAsync(call, cts.Token).WaitAsync(s_timeout);

        // cat saw one line and then end of file, and exited by itself.
        Assert.Equal(0, result.Exit?.Code);
        Assert.Equal("abc\nabc\n", result.StderrText);
    }

    [Fact]
    public async Task InterruptOnATerminalStillSignalsTheToolsGroupAndItsGrandchildIsKilled()
    {
        await using var agent = await TestAgent.StartAsync(output);
        using var cts = new CancellationTokenSource(s_timeout);
        using var call = await agent.StartCommandAsync(OnTerminal(Start("trap-int"), stdin: true, stdout: true), cts.Token);
        var result = new CommandResult();
        await ReadUntilStderrContainsAsync(call, result, "ready", cts.Token);
        var text = result.StderrText;
        var grandchild = int.Parse(text[(text.IndexOf("grandchild=", StringComparison.Ordinal) + "grandchild=".Length)..].Split('\n', '\r')[0], System.Globalization.CultureInfo.InvariantCulture);

        await call.RequestStream.WriteAsync(new ClientFrame { Interrupt = new Interrupt() }, cts.Token);
        await foreach (var frame in call.ResponseStream.ReadAllAsync(cts.Token))
        {
            result.Add(frame);
        }

        Assert.Equal(8, result.Exit?.Code);
        Assert.True(Processes.IsGone(result.Started!.Pid));
        await Processes.WaitGoneAsync(grandchild, TimeSpan.FromSeconds(5));
    }

    internal static StartCommand OnTerminal(StartCommand start, bool stdin, bool stdout, int columns = 80, int rows = 24)
    {
        start.Terminal = new TerminalInfo
        {
            StdinIsTty = stdin,
            StdoutIsTty = stdout,
            StderrIsTty = true,
            Columns = columns,
            Rows = rows,
            Term = "xterm-256color",
        };
        return start;
    }

    private static async Task ReadUntilStderrContainsAsync(
        AsyncDuplexStreamingCall<ClientFrame, ServerFrame> call,
        CommandResult result,
        string marker,
        CancellationToken cancellationToken)
    {
        while (!result.StderrText.Contains(marker, StringComparison.Ordinal))
        {
            bool more;
            try
            {
                more = await call.ResponseStream.MoveNext(cancellationToken);
            }
            catch (RpcException ex) when (ex.StatusCode == StatusCode.Cancelled)
            {
                throw new TimeoutException($"stderr never contained '{marker}'; stderr: {result.StderrText}", ex);
            }

            if (!more)
            {
                throw new InvalidOperationException($"stream ended before stderr contained '{marker}'; stderr: {result.StderrText}");
            }

            result.Add(call.ResponseStream.Current);
        }
    }
}
