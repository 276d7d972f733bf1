using System.Text;
using Grpc.Core;
using Rbs.Tests.Infrastructure;
using Rbs.V1;
using static Rbs.Tests.Agent.ExecuteCommandTests;

namespace Rbs.Tests.Agent;

/// <summary>
/// The agent's side of reattach (docs/reattach.md) on its own gRPC API: a reattachable command outlives its call,
/// keeps its output (spilling to disk beyond the memory bound), and only its own client can attach to it.
/// </summary>
public sealed class ReattachTests(ITestOutputHelper output)
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task OutputWrittenWhileDetachedIsServedFromTheSpillFileByteExactAndTheFileIsRemoved()
    {
        var spill = Directory.CreateTempSubdirectory("rbs-reattach-spill-");
        var files = Directory.CreateTempSubdirectory("rbs-reattach-files-");
        try
        {
            var stdout = RandomBytes(3 * 1024 * 1024, 1);
            var stderr = RandomBytes(2 * 1024 * 1024, 2);
            File.WriteAllBytes(Path.Combine(files.FullName, "out"), stdout);
            File.WriteAllBytes(Path.Combine(files.FullName, "err"), stderr);
            await using var agent = await TestAgent.StartAsync(
                output, "--reattach-memory-bytes", "65536", "--reattach-spill-dir", spill.FullName, "--reattach-grace", "00:01:00");
            using var cts = new CancellationTokenSource(s_timeout);
            var start = Start("two-files", Path.Combine(files.FullName, "out"), Path.Combine(files.FullName, "err"));
            start.Reattachable = true;

            // The first call only sees `started`, then goes away before the tool writes anything it reads.
            CommandStarted started;
            using (var callCts = CancellationTokenSource.CreateLinkedTokenSource(cts.Token))
            {
                var first = agent.Client.ExecuteCommand(cancellationToken: callCts.Token);
                await first.RequestStream.WriteAsync(new ClientFrame { Start = start }, cts.Token);
                Assert.True(await first.ResponseStream.MoveNext(cts.Token));
                started = first.ResponseStream.Current.Started;
                Assert.NotEmpty(started.AttachToken);
                Assert.Equal(60_000, started.ReattachGraceMillis);
                await callCts.CancelAsync();
                first.Dispose();
            }

            // The tool runs to its end with nobody attached (it never blocks on a full pipe); its output is on disk.
            await TestWait.EventuallyAsync(() => agent.Logs.Count(101) > 0, "the command ended while detached");
            var spilled = Assert.Single(Directory.GetFiles(spill.FullName));
            Assert.True(new FileInfo(spilled).Length > stdout.Length, $"spill file {spilled} holds {new FileInfo(spilled).Length} bytes");

            using var attach = agent.Client.ExecuteCommand(cancellationToken: cts.Token);
            await attach.RequestStream.WriteAsync(new ClientFrame
            {
                Attach = new AttachCommand { InvocationId = start.InvocationId, AttachToken = started.AttachToken, StdoutOffset = 0, StderrOffset = 0 },
            }, cts.Token);
            var result = new CommandResult();
            CommandAttached? attached = null;
            await foreach (var frame in attach.ResponseStream.ReadAllAsync(cts.Token))
            {
                if (frame.FrameCase == ServerFrame.FrameOneofCase.Attached)
                {
                    attached = frame.Attached;
                    continue;
                }

                result.Add(frame);
                if (frame.FrameCase == ServerFrame.FrameOneofCase.Exit)
                {
                    // A reattachable command's client confirms it has everything (else the agent keeps it for a reattach).
                    await attach.RequestStream.CompleteAsync();
                }
            }

            Assert.NotNull(attached);
            Assert.Equal(0, result.Exit?.Code);
            Assert.Equal(stdout, result.Stdout.ToArray());
            Assert.Equal(stderr, result.Stderr.ToArray());
            await TestWait.EventuallyAsync(() => Directory.GetFiles(spill.FullName).Length == 0, "the spill file was removed");
        }
        finally
        {
            spill.Delete(recursive: true);
            files.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task AttachResumesFromTheClientsOffsetsAndAnotherClientsAttachIsRefused()
    {
        await using var agent = await TestAgent.StartAsync(output);
        using var cts = new CancellationTokenSource(s_timeout);
        var start = Start("read-line");
        start.Reattachable = true;
        var first = agent.Client.ExecuteCommand(cancellationToken: cts.Token);
        await first.RequestStream.WriteAsync(new ClientFrame { Start = start }, cts.Token);
        Assert.True(await first.ResponseStream.MoveNext(cts.Token));
        var started = first.ResponseStream.Current.Started;
        await first.RequestStream.WriteAsync(new ClientFrame { Stdin = Google.Protobuf.ByteString.CopyFromUtf8("hel") }, cts.Token);

        // Unknown invocation: NotFound, with what to do.
        var unknown = await Assert.ThrowsAsync<RpcException>(() => AttachAsync(agent, Guid.NewGuid().ToString(), started.AttachToken, cts.Token));
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
        Assert.Contains("Run the command again", unknown.Status.Detail, StringComparison.Ordinal);

        // The right invocation with another client's token: PermissionDenied.
        var foreign = await Assert.ThrowsAsync<RpcException>(() => AttachAsync(agent, start.InvocationId, "not-the-token", cts.Token));
        Assert.Equal(StatusCode.PermissionDenied, foreign.StatusCode);
        Assert.Contains("belongs to another client", foreign.Status.Detail, StringComparison.Ordinal);

        // The owner's attach takes over from the (still connected) first call and learns how much stdin arrived.
        using var second = agent.Client.ExecuteCommand(cancellationToken: cts.Token);
        await second.RequestStream.WriteAsync(new ClientFrame
        {
            Attach = new AttachCommand { InvocationId = start.InvocationId, AttachToken = started.AttachToken },
        }, cts.Token);
        Assert.True(await second.ResponseStream.MoveNext(cts.Token));
        var attached = second.ResponseStream.Current.Attached;
        // The first call's "hel" may or may not have reached the tool yet: the client resends from the agent's offset.
        Assert.InRange(attached.StdinOffset, 0, 3);
        Assert.False(attached.StdinClosed);
        var line = "hello\n"u8.ToArray();
        await second.RequestStream.WriteAsync(new ClientFrame { Stdin = Google.Protobuf.ByteString.CopyFrom(line, (int)attached.StdinOffset, line.Length - (int)attached.StdinOffset) }, cts.Token);
        var result = new CommandResult();
        await foreach (var frame in second.ResponseStream.ReadAllAsync(cts.Token))
        {
            result.Add(frame);
            if (frame.FrameCase == ServerFrame.FrameOneofCase.Exit)
            {
                await second.RequestStream.CompleteAsync();
            }
        }

        Assert.Equal("got [hello]\n", result.StdoutText);
        Assert.Equal(0, result.Exit?.Code);
        first.Dispose();
    }

    [Fact]
    public async Task OutputBeyondTheSpillLimitWhileDetachedStopsTheCommandAndALaterAttachIsToldItIsIncomplete()
    {
        var spill = Directory.CreateTempSubdirectory("rbs-reattach-spill-");
        try
        {
            await using var agent = await TestAgent.StartAsync(
                output, "--reattach-memory-bytes", "65536", "--reattach-spill-bytes", "131072", "--reattach-spill-dir", spill.FullName);
            using var cts = new CancellationTokenSource(s_timeout);
            var marker = Path.Combine(spill.FullName, "..", $"flood-done-{Guid.NewGuid():N}");
            var start = Start("flood", (64L * 1024 * 1024).ToString(System.Globalization.CultureInfo.InvariantCulture), marker);
            start.Reattachable = true;
            CommandStarted started;
            using (var callCts = CancellationTokenSource.CreateLinkedTokenSource(cts.Token))
            {
                var first = agent.Client.ExecuteCommand(cancellationToken: callCts.Token);
                await first.RequestStream.WriteAsync(new ClientFrame { Start = start }, cts.Token);
                Assert.True(await first.ResponseStream.MoveNext(cts.Token));
                started = first.ResponseStream.Current.Started;
                await callCts.CancelAsync();
                first.Dispose();
            }

            // The agent stops the tool (SIGINT) once 192 KiB are held for nobody; 64 MiB are never all written.
            await TestWait.EventuallyAsync(() => agent.Logs.Count(145) == 1 && agent.Logs.Count(101) == 1, "the command was stopped at the spill limit");
            Assert.False(File.Exists(marker), "the tool wrote all its output although the agent stopped it");

            var refused = await Assert.ThrowsAsync<RpcException>(() => AttachAsync(agent, start.InvocationId, started.AttachToken, cts.Token));
            Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
            Assert.Contains("its output is incomplete", refused.Status.Detail, StringComparison.Ordinal);
        }
        finally
        {
            spill.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task OnATerminalTheMergedStreamResumesAtItsStderrOffset()
    {
        var files = Directory.CreateTempSubdirectory("rbs-reattach-files-");
        try
        {
            var text = Encoding.ASCII.GetBytes(Convert.ToBase64String(RandomBytes(1024 * 1024, 7), Base64FormattingOptions.InsertLineBreaks));
            File.WriteAllBytes(Path.Combine(files.FullName, "out"), text);
            File.WriteAllBytes(Path.Combine(files.FullName, "err"), []);
            await using var agent = await TestAgent.StartAsync(output);
            using var cts = new CancellationTokenSource(s_timeout);
            // stdout and stderr on the pseudo-terminal: one stream, sent as stderr frames.
            var start = TerminalTests.OnTerminal(Start("two-files", Path.Combine(files.FullName, "out"), Path.Combine(files.FullName, "err")), stdin: false, stdout: true);
            start.Reattachable = true;
            var received = new MemoryStream();
            CommandStarted? started = null;
            using (var callCts = CancellationTokenSource.CreateLinkedTokenSource(cts.Token))
            {
                var first = agent.Client.ExecuteCommand(cancellationToken: callCts.Token);
                await first.RequestStream.WriteAsync(new ClientFrame { Start = start }, cts.Token);
                while (received.Length < 64 * 1024 && await first.ResponseStream.MoveNext(cts.Token))
                {
                    var frame = first.ResponseStream.Current;
                    started ??= frame.Started;
                    Assert.NotEqual(ServerFrame.FrameOneofCase.Stdout, frame.FrameCase);
                    if (frame.FrameCase == ServerFrame.FrameOneofCase.Stderr)
                    {
                        received.Write(frame.Stderr.Span);
                    }
                }

                await callCts.CancelAsync();
                first.Dispose();
            }

            using var attach = agent.Client.ExecuteCommand(cancellationToken: cts.Token);
            await attach.RequestStream.WriteAsync(new ClientFrame
            {
                Attach = new AttachCommand { InvocationId = start.InvocationId, AttachToken = started!.AttachToken, StderrOffset = received.Length },
            }, cts.Token);
            ExitStatus? exit = null;
            await foreach (var frame in attach.ResponseStream.ReadAllAsync(cts.Token))
            {
                Assert.NotEqual(ServerFrame.FrameOneofCase.Stdout, frame.FrameCase);
                if (frame.FrameCase == ServerFrame.FrameOneofCase.Stderr)
                {
                    received.Write(frame.Stderr.Span);
                }
                else if (frame.FrameCase == ServerFrame.FrameOneofCase.Exit)
                {
                    exit = frame.Exit;
                    await attach.RequestStream.CompleteAsync();
                }
            }

            Assert.Equal(0, exit?.Code);
            Assert.Equal(Encoding.ASCII.GetString(text), Encoding.ASCII.GetString(received.ToArray()));
        }
        finally
        {
            files.Delete(recursive: true);
        }
    }

    private static async Task AttachAsync(TestAgent agent, string invocationId, string token, CancellationToken cancellationToken)
    {
        using var call = agent.Client.ExecuteCommand(cancellationToken: cancellationToken);
        await call.RequestStream.WriteAsync(new ClientFrame { Attach = new AttachCommand { InvocationId = invocationId, AttachToken = token } }, cancellationToken);
        await foreach (var frame in call.ResponseStream.ReadAllAsync(cancellationToken))
        {
        }
    }

    internal static byte[] RandomBytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }
}
