using System.Security.Cryptography;
using System.Text;
using Google.Protobuf;
using Grpc.Core;
using Rbs.V1;

namespace Rbs.Tests.Agent;

public sealed class ExecuteCommandTests(ITestOutputHelper output)
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task ExitCodesPassThroughExactly()
    {
        await using var agent = await TestAgent.StartAsync(output);
        foreach (var code in new[] { 0, 1, 2, 3, 37, 255 })
        {
            var result = await agent.RunAsync(Start("exit", code.ToString(System.Globalization.CultureInfo.InvariantCulture)), s_timeout);
            output.WriteLine($"exit {code} -> {result.Exit}");
            Assert.Equal(code, result.Exit?.Code);
            Assert.Equal(0, result.Exit?.Signal);
            Assert.Equal(ServerFrame.FrameOneofCase.Started, result.Order[0]);
            Assert.Equal(ServerFrame.FrameOneofCase.Exit, result.Order[^1]);
            Assert.Equal(TestAgent.AgentId, result.Started?.AgentId);
            Assert.True(result.Started?.Pid > 0);
        }
    }

    [Fact]
    public async Task DeathBySignalIsReportedAsSignalAndDistinctFromTheSameExitCode()
    {
        await using var agent = await TestAgent.StartAsync(output);

        var killed = await agent.RunAsync(Start("kill-self", "TERM"), s_timeout);
        var exited = await agent.RunAsync(Start("exit", "143"), s_timeout);

        Assert.Equal(143, killed.Exit?.Code);
        Assert.Equal(15, killed.Exit?.Signal);
        Assert.Equal(143, exited.Exit?.Code);
        Assert.Equal(0, exited.Exit?.Signal);
    }

    [Fact]
    public async Task ArgumentsArriveVerbatimAndWorkingDirectoryIsInsideTheWorkspace()
    {
        await using var agent = await TestAgent.StartAsync(output);
        Directory.CreateDirectory(Path.Combine(agent.Workspace, "sub", "dir"));
        string[] args =
        [
            "build", "//pkg:target", "with space", "double\"quote", "single'quote", "", "--", "--flag=a b",
            "$HOME", "`id`", "$(id)", "*", "; rm -rf /", "back\\slash", "ünïcödé", "new\nline", " ",
        ];
        var start = Start(["echo-args", .. args]);
        start.RelativeWorkingDirectory = "sub/dir";
        start.InvocationId = "inv-123";

        var result = await agent.RunAsync(start, s_timeout);

        Assert.Equal(0, result.Exit?.Code);
        Assert.Equal("inv-123", result.Started?.InvocationId);
        var fields = result.StdoutText.Split('\0');
        Assert.Equal(Path.Combine(agent.Workspace, "sub", "dir"), fields[0]);
        Assert.Equal(args.Length.ToString(System.Globalization.CultureInfo.InvariantCulture), fields[1]);
        Assert.Equal(args, fields[2..^1]);
    }

    [Fact]
    public async Task ArgumentsThatAreNotUtf8ArriveAsTheirExactBytes()
    {
        await using var agent = await TestAgent.StartAsync(output);
        byte[][] raw =
        [
            "echo-args"u8.ToArray(), [.. "latin-1 "u8, 0xe9, (byte)'t', 0xe9, (byte)' ', 0xff], [0xe2, 0x82], "plain ✓"u8.ToArray(), [],
        ];
        var start = new StartCommand { InvocationId = Guid.NewGuid().ToString() };
        start.Args.Add(raw.Select(bytes => Encoding.UTF8.GetString(bytes)));
        start.RawArgs.Add(raw.Select(ByteString.CopyFrom));

        var result = await agent.RunAsync(start, s_timeout);

        Assert.Equal(0, result.Exit?.Code);
        var fields = Split(result.Stdout.ToArray());
        Assert.Equal("4", Encoding.ASCII.GetString(fields[1]));
        Assert.Equal(raw[1..], fields[2..^1]);

        // raw_args must describe the same arguments as args.
        var mismatched = Start("echo-args", "a", "b");
        mismatched.RawArgs.Add(ByteString.CopyFromUtf8("echo-args"));
        var refused = await Assert.ThrowsAsync<RpcException>(() => agent.RunAsync(mismatched, s_timeout));
        Assert.Equal(StatusCode.InvalidArgument, refused.StatusCode);
        Assert.Contains("raw_args has 1 arguments and args 3", refused.Status.Detail, StringComparison.Ordinal);

        static List<byte[]> Split(byte[] bytes)
        {
            var parts = new List<byte[]>();
            var from = 0;
            for (var i = 0; i <= bytes.Length; i++)
            {
                if (i == bytes.Length || bytes[i] == 0)
                {
                    parts.Add(bytes[from..i]);
                    from = i + 1;
                }
            }

            return parts;
        }
    }

    [Fact]
    public async Task OnlyAllowListedClientEnvironmentReachesTheTool()
    {
        await using var agent = await TestAgent.StartAsync(output);
        var start = Start("env");
        start.Env.Add("TERM", "xterm-rbs-test");
        start.Env.Add("LC_ALL", "C.UTF-8");
        start.Env.Add("NO_COLOR", "1");
        start.Env.Add("PATH", "/evil/bin");
        start.Env.Add("LD_PRELOAD", "/evil/lib.so");
        start.Env.Add("RBS_SECRET_TEST", "leak");
        start.Terminal = new TerminalInfo { Columns = 123, Rows = 45 };

        var result = await agent.RunAsync(start, s_timeout);

        var env = result.StdoutText.Split('\0', StringSplitOptions.RemoveEmptyEntries)
            .Select(kv => kv.Split('=', 2))
            .ToDictionary(kv => kv[0], kv => kv.Length > 1 ? kv[1] : "");
        Assert.Equal("xterm-rbs-test", env["TERM"]);
        Assert.Equal("C.UTF-8", env["LC_ALL"]);
        Assert.Equal("1", env["NO_COLOR"]);
        Assert.Equal("123", env["COLUMNS"]);
        Assert.Equal("45", env["LINES"]);
        Assert.Equal(Environment.GetEnvironmentVariable("PATH"), env["PATH"]);
        Assert.False(env.ContainsKey("LD_PRELOAD"));
        Assert.False(env.ContainsKey("RBS_SECRET_TEST"));
    }

    [Fact]
    public async Task HundredMegabytesOfConcurrentStdoutAndStderrArriveBinaryExact()
    {
        const int PerStream = 50 * 1024 * 1024;
        await using var agent = await TestAgent.StartAsync(output);
        var dir = Directory.CreateTempSubdirectory("rbs-agent-data-");
        try
        {
            var outFile = Path.Combine(dir.FullName, "out.bin");
            var errFile = Path.Combine(dir.FullName, "err.bin");
            var expectedOut = WriteRandomFile(outFile, PerStream, seed: 1);
            var expectedErr = WriteRandomFile(errFile, PerStream, seed: 2);

            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(90));
            using var call = await agent.StartCommandAsync(Start("two-files", outFile, errFile), cts.Token);
            using var outHash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            using var errHash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            long outBytes = 0, errBytes = 0, switches = 0;
            var last = ServerFrame.FrameOneofCase.None;
            ExitStatus? exit = null;
            await foreach (var frame in call.ResponseStream.ReadAllAsync(cts.Token))
            {
                Assert.Null(exit);
                switch (frame.FrameCase)
                {
                    case ServerFrame.FrameOneofCase.Stdout:
                        outHash.AppendData(frame.Stdout.Span);
                        outBytes += frame.Stdout.Length;
                        break;
                    case ServerFrame.FrameOneofCase.Stderr:
                        errHash.AppendData(frame.Stderr.Span);
                        errBytes += frame.Stderr.Length;
                        break;
                    case ServerFrame.FrameOneofCase.Exit:
                        exit = frame.Exit;
                        break;
                    default:
                        break;
                }

                if (frame.FrameCase is ServerFrame.FrameOneofCase.Stdout or ServerFrame.FrameOneofCase.Stderr)
                {
                    switches += last != frame.FrameCase && last != ServerFrame.FrameOneofCase.None ? 1 : 0;
                    last = frame.FrameCase;
                }
            }

            output.WriteLine($"stdout {outBytes} bytes, stderr {errBytes} bytes, {switches} stdout/stderr switches, exit {exit}");
            Assert.Equal(0, exit?.Code);
            Assert.Equal(PerStream, outBytes);
            Assert.Equal(PerStream, errBytes);
            Assert.Equal(Convert.ToHexString(expectedOut), Convert.ToHexString(outHash.GetHashAndReset()));
            Assert.Equal(Convert.ToHexString(expectedErr), Convert.ToHexString(errHash.GetHashAndReset()));
            // Both pipes were read while the tool ran, not one after the other.
            Assert.True(switches > 2, $"stdout and stderr were not interleaved ({switches} switches)");
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task StdinRoundTripsBinaryExactAndEofEndsTheTool()
    {
        await using var agent = await TestAgent.StartAsync(output);
        var data = new byte[3 * 1024 * 1024 + 17];
        new Random(3).NextBytes(data);
        using var cts = new CancellationTokenSource(s_timeout);
        using var call = await agent.StartCommandAsync(Start("cat"), cts.Token);

        // Send while reading: cat blocks on a full stdout pipe if nobody reads.
        var send = Task.Run(async () =>
        {
            for (var offset = 0; offset < data.Length; offset += 32 * 1024)
            {
                var chunk = ByteString.CopyFrom(data, offset, Math.Min(32 * 1024, data.Length - offset));
                await call.RequestStream.WriteAsync(new ClientFrame { Stdin = chunk }, cts.Token);
            }

            await call.RequestStream.WriteAsync(new ClientFrame { StdinEof = new StdinEof() }, cts.Token);
        });
        var result = await CommandResult.ReadToEndAsync(call, cts.Token).WaitAsync(s_timeout);
        await send.WaitAsync(s_timeout);

        Assert.Equal(0, result.Exit?.Code);
        Assert.Equal(data.Length, result.Stdout.Length);
        Assert.True(data.AsSpan().SequenceEqual(result.Stdout.ToArray()), "stdin did not come back byte for byte");
    }

    [Fact]
    public async Task HalfClosingTheRequestStreamEndsStdinButNotTheCommand()
    {
        await using var agent = await TestAgent.StartAsync(output);
        using var cts = new CancellationTokenSource(s_timeout);
        using var call = await agent.StartCommandAsync(Start("cat"), cts.Token);
        await call.RequestStream.WriteAsync(new ClientFrame { Stdin = ByteString.CopyFromUtf8("last words\n") }, cts.Token);
        await call.RequestStream.CompleteAsync();

        var result = await CommandResult.ReadToEndAsync(call, cts.Token).WaitAsync(s_timeout);

        Assert.Equal("last words\n", result.StdoutText);
        Assert.Equal(0, result.Exit?.Code);
    }

    [Fact]
    public async Task SlowClientBlocksTheToolInsteadOfGrowingAgentBuffers()
    {
        const long Total = 128L * 1024 * 1024;
        await using var agent = await TestAgent.StartAsync(output);
        var marker = Path.Combine(agent.Workspace, "flood-finished");
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        using var call = await agent.StartCommandAsync(Start("flood", Total.ToString(System.Globalization.CultureInfo.InvariantCulture), marker), cts.Token);

        Assert.True(await call.ResponseStream.MoveNext(cts.Token));
        Assert.Equal(ServerFrame.FrameOneofCase.Started, call.ResponseStream.Current.FrameCase);

        // The client reads nothing for a while. Without backpressure the tool would write its 128 MiB into agent
        // memory in well under a second and create the marker.
        await Task.Delay(TimeSpan.FromSeconds(3));
        Assert.False(File.Exists(marker), "the tool finished writing 128 MiB although the client read nothing: the agent buffered it");
        var status = await agent.Client.GetStatusAsync(new GetStatusRequest(), cancellationToken: cts.Token);
        Assert.Equal(1, status.RunningCommands);

        // Now read at a trickle, then everything; every byte must arrive.
        long received = 0;
        ExitStatus? exit = null;
        var frames = 0;
        await foreach (var frame in call.ResponseStream.ReadAllAsync(cts.Token))
        {
            if (++frames < 20)
            {
                await Task.Delay(20, cts.Token);
            }

            received += frame.Stdout.Length;
            exit ??= frame.Exit;
        }

        output.WriteLine($"received {received} bytes in {frames} frames, exit {exit}");
        Assert.Equal(Total, received);
        Assert.Equal(0, exit?.Code);
        Assert.True(File.Exists(marker));
    }

    [Fact]
    public async Task FirstFrameMustBeStart()
    {
        await using var agent = await TestAgent.StartAsync(output);
        using var cts = new CancellationTokenSource(s_timeout);

        using (var call = agent.Client.ExecuteCommand(cancellationToken: cts.Token))
        {
            await call.RequestStream.WriteAsync(new ClientFrame { Stdin = ByteString.CopyFromUtf8("hello") }, cts.Token);
            var ex = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(cts.Token));
            output.WriteLine(ex.Status.ToString());
            Assert.Equal(StatusCode.InvalidArgument, ex.StatusCode);
            Assert.Contains("first ClientFrame must be 'start'", ex.Status.Detail, StringComparison.Ordinal);
            Assert.Contains("Stdin", ex.Status.Detail, StringComparison.Ordinal);
        }

        using (var call = agent.Client.ExecuteCommand(cancellationToken: cts.Token))
        {
            await call.RequestStream.CompleteAsync();
            var ex = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(cts.Token));
            Assert.Equal(StatusCode.InvalidArgument, ex.StatusCode);
        }
    }

    [Theory]
    [InlineData("..", StatusCode.InvalidArgument, "'..'")]
    [InlineData("sub/../..", StatusCode.InvalidArgument, "'..'")]
    [InlineData("/etc", StatusCode.InvalidArgument, "absolute")]
    [InlineData("escape", StatusCode.InvalidArgument, "outside the workspace")]
    [InlineData("sub/escape-nested", StatusCode.InvalidArgument, "outside the workspace")]
    [InlineData("missing/dir", StatusCode.FailedPrecondition, "does not exist")]
    public async Task WorkingDirectoryMustStayInsideTheWorkspace(string relative, StatusCode expected, string message)
    {
        await using var agent = await TestAgent.StartAsync(output);
        var outside = Directory.CreateTempSubdirectory("rbs-agent-outside-");
        try
        {
            Directory.CreateDirectory(Path.Combine(agent.Workspace, "sub"));
            Directory.CreateSymbolicLink(Path.Combine(agent.Workspace, "escape"), outside.FullName);
            Directory.CreateSymbolicLink(Path.Combine(agent.Workspace, "sub", "escape-nested"), "../../" + outside.Name);
            var start = Start("echo-args");
            start.RelativeWorkingDirectory = relative;

            var ex = await Assert.ThrowsAsync<RpcException>(() => agent.RunAsync(start, s_timeout));

            output.WriteLine(ex.Status.ToString());
            Assert.Equal(expected, ex.StatusCode);
            Assert.Contains(message, ex.Status.Detail, StringComparison.Ordinal);
        }
        finally
        {
            outside.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task SymlinkThatStaysInsideTheWorkspaceIsAllowed()
    {
        await using var agent = await TestAgent.StartAsync(output);
        Directory.CreateDirectory(Path.Combine(agent.Workspace, "real"));
        Directory.CreateSymbolicLink(Path.Combine(agent.Workspace, "alias"), "real");
        var start = Start("echo-args");
        start.RelativeWorkingDirectory = "alias";

        var result = await agent.RunAsync(start, s_timeout);

        Assert.Equal(0, result.Exit?.Code);
        Assert.Equal(Path.Combine(agent.Workspace, "real"), result.StdoutText.Split('\0')[0]);
    }

    internal static StartCommand Start(params string[] args)
    {
        var start = new StartCommand { InvocationId = Guid.NewGuid().ToString() };
        start.Args.Add(args);
        return start;
    }

    private static byte[] WriteRandomFile(string path, int length, int seed)
    {
        var random = new Random(seed);
        var buffer = new byte[1024 * 1024];
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        using var file = File.Create(path);
        for (var written = 0; written < length; written += buffer.Length)
        {
            random.NextBytes(buffer);
            var n = Math.Min(buffer.Length, length - written);
            file.Write(buffer, 0, n);
            hash.AppendData(buffer, 0, n);
        }

        return hash.GetHashAndReset();
    }
}
