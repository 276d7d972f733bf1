using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using Grpc.Core;
using Rbs.JBazel.Remote;
using Rbs.JBazel.Workspace;
using Rbs.Shared.Protocol;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.JBazel;

/// <summary>
/// The real jbazel executable against fake orchestrator/agent servers on real Kestrel (127.0.0.1:0).
/// </summary>
public sealed class JBazelFunctionalTests(ITestOutputHelper output) : IAsyncLifetime, IDisposable
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(30);

    private readonly TempWorkspace _workspace = new();
    private FakeRemote _remote = null!;

    public async Task InitializeAsync() => _remote = await FakeRemote.StartAsync(output);

    public async Task DisposeAsync() => await _remote.DisposeAsync();

    public void Dispose() => _workspace.Dispose();

    [Fact]
    public async Task ArgumentsWorkingDirectoryAndEnvironmentArriveExactly()
    {
        var cwd = _workspace.CreateDirectory("src/app");
        string[] args =
        [
            "--output_base=/tmp/ob", "--host_jvm_args=-Xmx1g", "build", "--rbs_status", "never", "//src/app:all",
            "--config=ci", "-c", "opt", "--", "--rbs_not_mine", "-x", "",
        ];
        var environment = new Dictionary<string, string?>
        {
            ["TERM"] = "xterm-256color",
            ["LANG"] = "de_DE.UTF-8",
            ["LC_ALL"] = "C.UTF-8",
            ["TZ"] = "Europe/Berlin",
            ["NO_COLOR"] = "1",
            ["COLORTERM"] = null,
            ["SECRET_TOKEN"] = "must-not-leave-the-laptop",
        };

        await using var jbazel = Start(cwd, args, environment);
        Assert.Equal(0, await jbazel.WaitForExitAsync(s_timeout));

        var call = Assert.Single(_remote.AgentCalls);
        Assert.Equal(
            ["--output_base=/tmp/ob", "--host_jvm_args=-Xmx1g", "build", "//src/app:all", "--config=ci", "-c", "opt", "--", "--rbs_not_mine", "-x", ""],
            call.Start.Args);
        Assert.Equal("src/app", call.Start.RelativeWorkingDirectory);
        var root = RepoHash.RealPath(_workspace.Root);
        Assert.Equal(root, call.Start.ClientWorkspaceRoot);
        Assert.True(Guid.TryParse(call.Start.InvocationId, out _), call.Start.InvocationId);
        Assert.Equal("xterm-256color", call.Start.Env["TERM"]);
        Assert.Equal("de_DE.UTF-8", call.Start.Env["LANG"]);
        Assert.Equal("C.UTF-8", call.Start.Env["LC_ALL"]);
        Assert.Equal("Europe/Berlin", call.Start.Env["TZ"]);
        Assert.Equal("1", call.Start.Env["NO_COLOR"]);
        Assert.False(call.Start.Env.ContainsKey("SECRET_TOKEN"));
        Assert.False(call.Start.Env.ContainsKey("PATH"));
        Assert.False(call.Start.Env.ContainsKey("COLORTERM"));
        Assert.False(call.Start.Terminal.StdinIsTty);
        Assert.False(call.Start.Terminal.StdoutIsTty);
        Assert.False(call.Start.Terminal.StderrIsTty);
        Assert.Equal("xterm-256color", call.Start.Terminal.Term);

        var (request, headers) = Assert.Single(_remote.GetServerCalls);
        Assert.Equal(RepoHash.Compute(Dns.GetHostName(), root), request.RepoHash);
        Assert.Matches("^[0-9a-f]{64}$", request.RepoHash);
        Assert.Equal(root, request.SourcePath);
        Assert.Equal(ConnectMode.Unspecified, request.ConnectMode);
        Assert.StartsWith("jbazel/", request.ClientVersion, StringComparison.Ordinal);
        Assert.Equal(Dns.GetHostName(), request.ClientHost);
        Assert.Null(headers.Get("authorization"));
        Assert.Equal("", jbazel.StderrText);
    }

    [Fact]
    public async Task StdoutAndStderrAreBinaryExact()
    {
        var random = new Random(1234);
        var stdout = new byte[3 * 1024 * 1024 + 17];
        var stderr = new byte[2 * 1024 * 1024 + 5];
        random.NextBytes(stdout);
        random.NextBytes(stderr);
        _remote.Execute = async call =>
        {
            var chunks = new Random(99);
            int o = 0, e = 0;
            while (o < stdout.Length || e < stderr.Length)
            {
                // Interleaved, odd-sized chunks, including every byte value and empty-ish tails.
                var n = chunks.Next(1, 70_000);
                if (chunks.Next(2) == 0 && o < stdout.Length)
                {
                    n = Math.Min(n, stdout.Length - o);
                    await call.StdoutAsync(stdout.AsSpan(o, n));
                    o += n;
                }
                else if (e < stderr.Length)
                {
                    n = Math.Min(n, stderr.Length - e);
                    await call.StderrAsync(stderr.AsSpan(e, n));
                    e += n;
                }
            }

            await call.ExitAsync(0);
        };

        await using var jbazel = Start(_workspace.Root, ["build", "//..."]);
        Assert.Equal(0, await jbazel.WaitForExitAsync(s_timeout));
        Assert.True(stdout.AsSpan().SequenceEqual(jbazel.Stdout), $"stdout differs: {jbazel.Stdout.Length} of {stdout.Length} bytes");
        Assert.True(stderr.AsSpan().SequenceEqual(jbazel.Stderr), $"stderr differs: {jbazel.Stderr.Length} of {stderr.Length} bytes");
    }

    [Fact]
    public async Task StdinArrivesExactlyFollowedByEof()
    {
        var input = new byte[1024 * 1024 + 3];
        new Random(7).NextBytes(input);
        _remote.Execute = async call =>
        {
            var received = await call.StdinAtEof.WaitAsync(s_timeout);
            await call.StdoutAsync(received);
            await call.ExitAsync(0);
        };

        await using var jbazel = Start(_workspace.Root, ["run", "//:cat"], closeStdin: false);
        await jbazel.StandardInput.WriteAsync(input).AsTask().WaitAsync(s_timeout);
        jbazel.StandardInput.Close();

        Assert.Equal(0, await jbazel.WaitForExitAsync(s_timeout));
        Assert.True(input.AsSpan().SequenceEqual(jbazel.Stdout), $"echoed {jbazel.Stdout.Length} of {input.Length} bytes");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(37)]
    public async Task RemoteExitCodePassesThrough(int code)
    {
        _remote.Execute = async call =>
        {
            await call.StdoutAsync($"exiting {code}\n");
            await call.ExitAsync(code);
        };

        await using var jbazel = Start(_workspace.Root, ["test", "//..."]);
        Assert.Equal(code, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Equal($"exiting {code}\n", jbazel.StdoutText);
        Assert.Equal("", jbazel.StderrText);
    }

    [Fact]
    public async Task CtrlCSendsInterruptAndReturnsBazelsCode()
    {
        _remote.Execute = async call =>
        {
            await call.StdoutAsync("building\n");
            var interrupt = await call.Interrupts.Reader.ReadAsync(call.Aborted).AsTask().WaitAsync(s_timeout);
            // bazel prints this and exits 8 after SIGINT; the fake does the same once the interrupt arrives.
            await call.StderrAsync(System.Text.Encoding.UTF8.GetBytes($"interrupted force={interrupt.Force}\n"));
            await call.ExitAsync(8);
        };

        await using var jbazel = Start(_workspace.Root, ["build", "//slow"]);
        await jbazel.WaitForStdoutAsync("building\n", s_timeout);
        await jbazel.SignalAsync("INT");

        Assert.Equal(8, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Equal("interrupted force=False\n", jbazel.StderrText);
    }

    [Fact]
    public async Task SecondCtrlCLeavesAtOnceWithExit8()
    {
        var forced = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        _remote.Execute = async call =>
        {
            await call.StdoutAsync("building\n");
            await call.Interrupts.Reader.ReadAsync(call.Aborted).AsTask().WaitAsync(s_timeout);
            await call.StdoutAsync("ignoring the first interrupt\n");
            try
            {
                var second = await call.Interrupts.Reader.ReadAsync(call.Aborted).AsTask().WaitAsync(s_timeout);
                forced.TrySetResult(second.Force);
            }
            catch (Exception ex) when (ex is OperationCanceledException or System.Threading.Channels.ChannelClosedException)
            {
                forced.TrySetResult(false);
            }

            // A stubborn tool: never exits on its own.
            await Task.Delay(Timeout.Infinite, call.Aborted);
        };

        await using var jbazel = Start(_workspace.Root, ["build", "//stubborn"]);
        await jbazel.WaitForStdoutAsync("building\n", s_timeout);
        await jbazel.SignalAsync("INT");
        await jbazel.WaitForStdoutAsync("ignoring the first interrupt\n", s_timeout);
        await jbazel.SignalAsync("INT");

        Assert.Equal(8, await jbazel.WaitForExitAsync(TimeSpan.FromSeconds(10)));
        // The forced interrupt is best effort, but on loopback it always makes it.
        Assert.True(await forced.Task.WaitAsync(s_timeout), "the agent did not receive Interrupt{force=true}");
    }

    [Fact]
    public async Task OrchestratorUnreachableExits38WithActionableLine()
    {
        var port = UnusedPort();
        await using var jbazel = Start(_workspace.Root, ["build", "//..."], new() { ["RBS_ORCHESTRATOR"] = $"http://127.0.0.1:{port}" });
        Assert.Equal(38, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Equal(
            $"rbs: cannot reach http://127.0.0.1:{port} (connection refused), the RBS orchestrator or gateway address set by environment variable RBS_ORCHESTRATOR. " +
            $"Nothing answers there on this machine: start the server meant to listen at port {port} (the local stack: 'rbs-orchestrator --local-mode'; or your gateway), " +
            "or correct --rbs_orchestrator / RBS_ORCHESTRATOR.\n",
            jbazel.StderrText);
        Assert.Empty(jbazel.Stdout);
    }

    [Fact]
    public async Task GetServerInvalidArgumentExits34WithServersMessage()
    {
        _remote.GetServer = (_, _) => throw new RpcException(new Status(StatusCode.InvalidArgument, "source_path '/x' does not exist on the orchestrator's host"));

        await using var jbazel = Start(_workspace.Root, ["build", "//..."]);
        Assert.Equal(34, await jbazel.WaitForExitAsync(s_timeout));
        var line = Assert.Single(jbazel.StderrText.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("rbs: ", line, StringComparison.Ordinal);
        Assert.Contains("(InvalidArgument): source_path '/x' does not exist on the orchestrator's host", line, StringComparison.Ordinal);
        Assert.Empty(_remote.AgentCalls);
    }

    [Fact]
    public async Task GetServerResourceExhaustedIsTheAgentLimitAndExits50()
    {
        // The orchestrator answers ResourceExhausted only for its agent limits (issue 10, defect 9): not transient (38),
        // since running again at once will not help, but a code of its own that no bazel code collides with.
        _remote.GetServer = (_, _) => throw new RpcException(new Status(StatusCode.ResourceExhausted, "user 'local' already has 4 agents"));

        await using var jbazel = Start(_workspace.Root, ["build", "//..."]);
        Assert.Equal(50, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Contains("refused to start another agent: user 'local' already has 4 agents", jbazel.StderrText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task GetServerFailedByAProxyIsRepeatedAndTheCommandRuns()
    {
        // A load balancer in front of gateway replicas during a rolling restart: its upstream stopped mid-call.
        _remote.ProxyFailures.Enqueue(502);
        _remote.ProxyFailures.Enqueue(503);
        _remote.ProxyFailures.Enqueue(504);

        await using var jbazel = Start(_workspace.Root, ["--rbs_status=never", "build", "//..."]);
        Assert.Equal(0, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Equal("", jbazel.StderrText);
        Assert.Equal(3, _remote.ProxyFailuresServed);
        Assert.Single(_remote.GetServerCalls);
        Assert.Single(_remote.AgentCalls);
    }

    [Fact]
    public async Task GetServerAProxyKeepsFailingExits38AfterABoundedNumberOfCalls()
    {
        for (var i = 0; i < 20; i++)
        {
            _remote.ProxyFailures.Enqueue(502);
        }

        await using var jbazel = Start(_workspace.Root, ["build", "//..."]);
        Assert.Equal(38, await jbazel.WaitForExitAsync(s_timeout));
        var line = Assert.Single(jbazel.StderrText.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains("could not provide an agent (Unavailable): Bad gRPC response. HTTP status code: 502", line, StringComparison.Ordinal);
        Assert.Equal(GetServerClient.MaxAttempts, _remote.ProxyFailuresServed);
        Assert.Empty(_remote.AgentCalls);
    }

    [Fact]
    public async Task AWarmCommandSkipsGetServerWhileTheCachedAgentSaysItIsThatAgent()
    {
        _remote.StatusAgentId = FakeRemote.AgentId;
        await using (var first = Start(_workspace.Root, ["--rbs_status=never", "build", "//..."]))
        {
            Assert.Equal(0, await first.WaitForExitAsync(s_timeout));
        }

        Assert.Single(_remote.GetServerCalls);
        var entry = Assert.Single(Directory.GetFiles(Path.Combine(_workspace.Home, ".cache", "jbazel", "allocations")));
        // It holds the session token: only its owner may read it.
        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(entry));
        }

        await using var second = Start(_workspace.Root, ["--rbs_status=always", "build", "//..."]);
        Assert.Equal(0, await second.WaitForExitAsync(s_timeout));
        Assert.Single(_remote.GetServerCalls);
        Assert.Equal(1, _remote.StatusCalls);
        Assert.Equal(2, _remote.AgentCalls.Count);
        Assert.Matches(@"^rbs: agent fake-agent-1 \(process 4242\) warm in \d+ ms, trace [0-9a-f]{32}$", second.StderrText.Split('\n')[0]);
    }

    [Theory]
    [InlineData("another-agent")]
    [InlineData(null)]
    public async Task ACachedAgentThatIsNoLongerThatAgentFallsBackToGetServerSilently(string? nowAnswering)
    {
        _remote.StatusAgentId = FakeRemote.AgentId;
        await using (var first = Start(_workspace.Root, ["build", "//..."]))
        {
            Assert.Equal(0, await first.WaitForExitAsync(s_timeout));
        }

        // Another agent on the cached address (a port reused), or none that can say who it is.
        _remote.StatusAgentId = nowAnswering;
        await using var second = Start(_workspace.Root, ["build", "//..."]);
        Assert.Equal(0, await second.WaitForExitAsync(s_timeout));
        Assert.Equal("", second.StderrText);
        Assert.Equal(2, _remote.GetServerCalls.Count);
        Assert.Equal(2, _remote.AgentCalls.Count);
    }

    [Fact]
    public async Task AStartFailedByAProxyIsSentAgainWithTheSameInvocation()
    {
        _remote.AgentProxyFailures.Enqueue(502);
        _remote.AgentProxyFailures.Enqueue(503);
        _remote.Execute = async call =>
        {
            await call.StdoutAsync("ran once\n");
            await call.ExitAsync(3);
        };

        await using var jbazel = Start(_workspace.Root, ["--rbs_status=never", "build", "//..."]);
        Assert.Equal(3, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Equal("ran once\n", jbazel.StdoutText);
        Assert.Equal("", jbazel.StderrText);
        Assert.Equal(2, _remote.ProxyFailuresServed);
        Assert.Single(_remote.AgentCalls);
    }

    [Fact]
    public async Task AStartAProxyKeepsFailingExits38AfterABoundedNumberOfCalls()
    {
        for (var i = 0; i < 20; i++)
        {
            _remote.AgentProxyFailures.Enqueue(502);
        }

        await using var jbazel = Start(_workspace.Root, ["build", "//..."]);
        Assert.Equal(38, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Contains("HTTP status code: 502", jbazel.StderrText, StringComparison.Ordinal);
        Assert.Equal(CommandSession.MaxStartAttempts, _remote.ProxyFailuresServed);
        Assert.Empty(_remote.AgentCalls);
    }

    [Fact]
    public async Task GetServerUnavailableFromTheOrchestratorItselfIsNotRepeated()
    {
        // A gRPC answer with a reason (e.g. the agent did not register) is the server's verdict: jbazel says it at once.
        _remote.GetServer = (_, _) => throw new RpcException(new Status(StatusCode.Unavailable, "agent a1 did not register at the gateway"));

        await using var jbazel = Start(_workspace.Root, ["build", "//..."]);
        Assert.Equal(38, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Contains("could not provide an agent (Unavailable): agent a1 did not register at the gateway", jbazel.StderrText, StringComparison.Ordinal);
        Assert.Single(_remote.GetServerCalls);
    }

    [Theory]
    [InlineData("connection")]
    [InlineData("stream")]
    public async Task AgentDyingMidCommandExits38(string what)
    {
        // The agent dies only after jbazel has printed what it sent: under load a reset can otherwise
        // overtake data still in flight, which is not what this test is about.
        var outputPrinted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _remote.Execute = async call =>
        {
            await call.StdoutAsync("half of the output\n");
            await outputPrinted.Task.WaitAsync(s_timeout);
            if (what == "connection")
            {
                // The agent's process dies: its socket closes without an exit frame.
                _remote.AbortConnections();
            }
            else
            {
                // A proxy in between (the gateway) resets just this stream.
                call.Context.GetHttpContext().Abort();
            }

            await Task.Delay(Timeout.Infinite, call.Aborted);
        };

        await using var jbazel = Start(_workspace.Root, ["build", "//..."]);
        await jbazel.WaitForStdoutAsync("half of the output\n", s_timeout);
        outputPrinted.SetResult();
        Assert.Equal(38, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Equal("half of the output\n", jbazel.StdoutText);
        var line = Assert.Single(jbazel.StderrText.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"rbs: lost the connection to agent {FakeRemote.AgentId} at {_remote.DirectResponse().Address} mid-command (", line, StringComparison.Ordinal);
        Assert.EndsWith("Run the command again; GetServer starts a new agent if this one died.", line, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AgentEndingStreamWithoutExitFrameExits38()
    {
        _remote.Execute = call => call.StdoutAsync("no exit status follows\n");

        await using var jbazel = Start(_workspace.Root, ["build", "//..."]);
        Assert.Equal(38, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Contains("mid-command (the stream ended without an exit status)", jbazel.StderrText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AgentUnreachableExits38()
    {
        var port = UnusedPort();
        _remote.GetServer = (_, _) => Task.FromResult(new GetServerResponse
        {
            AgentId = "gone-agent",
            Address = $"http://127.0.0.1:{port}",
            ConnectMode = ConnectMode.Direct,
            Backend = "process",
            BackendRef = "1",
        });

        await using var jbazel = Start(_workspace.Root, ["build", "//..."]);
        Assert.Equal(38, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Equal(
            $"rbs: cannot reach agent gone-agent at http://127.0.0.1:{port} (connection refused). Run the command again; GetServer starts a new agent if this one died.\n",
            jbazel.StderrText);
    }

    [Fact]
    public async Task OutsideAWorkspaceExits2WithoutCallingTheOrchestrator()
    {
        var outside = Directory.CreateTempSubdirectory("jbazel-no-ws-").FullName;
        try
        {
            await using var jbazel = Start(outside, ["build", "//..."]);
            Assert.Equal(2, await jbazel.WaitForExitAsync(s_timeout));
            Assert.Equal(
                "ERROR: The 'build' command is only supported from within a workspace (below a directory having a MODULE.bazel, REPO.bazel, WORKSPACE or WORKSPACE.bazel file).\n",
                jbazel.StderrText);
            Assert.Empty(_remote.GetServerCalls);
        }
        finally
        {
            Directory.Delete(outside, recursive: true);
        }
    }

    [Fact]
    public async Task BadRbsOptionExits2WithoutCallingTheOrchestrator()
    {
        await using var jbazel = Start(_workspace.Root, ["build", "--rbs_connect=sideways", "//..."]);
        Assert.Equal(2, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Contains("'sideways' is not a connect mode; expected direct, tunnel or auto", jbazel.StderrText, StringComparison.Ordinal);
        Assert.Empty(_remote.GetServerCalls);
    }

    [Fact]
    public async Task StatusLineOnlyWhenAskedSinceStderrIsAPipe()
    {
        await using (var quiet = Start(_workspace.Root, ["build", "//..."]))
        {
            Assert.Equal(0, await quiet.WaitForExitAsync(s_timeout));
            Assert.DoesNotContain("rbs: agent", quiet.StderrText, StringComparison.Ordinal);
        }

        await using var loud = Start(_workspace.Root, ["--rbs_status=always", "build", "//..."]);
        Assert.Equal(0, await loud.WaitForExitAsync(s_timeout));
        Assert.Matches(new Regex($"^rbs: agent {FakeRemote.AgentId} \\(process 4242\\) warm in [0-9]+ ms, trace [0-9a-f]{{32}}\n$"), loud.StderrText);
    }

    [Fact]
    public async Task EachRunStartsOneW3CTraceThatGetServerAndExecuteCommandCarryAndTheStatusLineNames()
    {
        await using (var first = Start(_workspace.Root, ["--rbs_status=always", "build", "//..."]))
        {
            Assert.Equal(0, await first.WaitForExitAsync(s_timeout));
        }

        await using var second = Start(_workspace.Root, ["--rbs_status=always", "build", "//..."]);
        Assert.Equal(0, await second.WaitForExitAsync(s_timeout));

        var traceIds = new List<string>();
        var getServers = _remote.GetServerCalls.ToArray();
        var executes = _remote.AgentCalls.ToArray();
        Assert.Equal(2, getServers.Length);
        Assert.Equal(2, executes.Length);
        for (var run = 0; run < 2; run++)
        {
            var header = getServers[run].Headers.GetValue("traceparent");
            Assert.NotNull(header);
            var match = Regex.Match(header, "^00-(?<trace>[0-9a-f]{32})-(?<span>[0-9a-f]{16})-01$");
            Assert.True(match.Success, $"not a W3C traceparent: {header}");
            Assert.NotEqual(new string('0', 32), match.Groups["trace"].Value);
            // The agent's call continues the same trace.
            Assert.Equal(header, executes[run].Headers.GetValue("traceparent"));
            traceIds.Add(match.Groups["trace"].Value);
        }

        Assert.NotEqual(traceIds[0], traceIds[1]);
        Assert.EndsWith($", trace {traceIds[1]}\n", second.StderrText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task OnATerminalTheStatusLineIsPrintedAndTheTerminalIsDescribed()
    {
        if (!File.Exists("/usr/bin/script"))
        {
            // util-linux is part of every Debian install; without script(1) there is no pty to test with.
            TestLog.Write(output, "script(1) missing: cannot create a pseudo-terminal");
            return;
        }

        _remote.Execute = async call =>
        {
            await call.StdoutAsync("tty output\n");
            await call.ExitAsync(0);
        };

        await using var jbazel = JBazelProcess.Start(
            output,
            _workspace.Root,
            _workspace.Home,
            new Dictionary<string, string?> { ["RBS_ORCHESTRATOR"] = _remote.Address.ToString(), ["COLUMNS"] = "123", ["LINES"] = "45", ["TERM"] = "xterm" },
            ["build", "//..."],
            pseudoTerminal: true);
        Assert.Equal(0, await jbazel.WaitForExitAsync(s_timeout));

        // script(1) merges the terminal's output into its stdout.
        Assert.Matches(new Regex($"rbs: agent {FakeRemote.AgentId} \\(process 4242\\) warm in [0-9]+ ms, trace [0-9a-f]{{32}}\r?\n"), jbazel.StdoutText);
        Assert.Contains("tty output", jbazel.StdoutText, StringComparison.Ordinal);
        var terminal = Assert.Single(_remote.AgentCalls).Start.Terminal;
        Assert.True(terminal.StdinIsTty && terminal.StdoutIsTty && terminal.StderrIsTty, terminal.ToString());
        Assert.True(terminal.Columns > 0 && terminal.Rows > 0, terminal.ToString());
        Assert.Equal("xterm", terminal.Term);
    }

    [Fact]
    public async Task BackgroundJobOnATerminalIsNotStoppedByReadingIt()
    {
        if (!File.Exists("/usr/bin/script") || !File.Exists("/bin/bash"))
        {
            TestLog.Write(output, "script(1) or bash missing: cannot create a job-controlled terminal");
            return;
        }

        _remote.Execute = async call =>
        {
            // Reading a terminal from a background job would stop jbazel (SIGTTIN) and this would hang.
            var stdin = await call.StdinAtEof.WaitAsync(s_timeout);
            await call.StdoutAsync($"stdin bytes: {stdin.Length}\n");
            await call.ExitAsync(0);
        };

        await using var jbazel = JBazelProcess.Start(
            output,
            _workspace.Root,
            _workspace.Home,
            new Dictionary<string, string?> { ["RBS_ORCHESTRATOR"] = _remote.Address.ToString(), ["PS1"] = "$ " },
            ["build", "//..."],
            pseudoTerminal: true,
            // An interactive shell has job control: `&` puts jbazel in a background process group.
            shellCommand: command => $"bash --norc -ic \"{command} & wait $!; echo job-exit=$?; exit\"");
        try
        {
            Assert.Equal(0, await jbazel.WaitForExitAsync(s_timeout));
            Assert.Contains("stdin bytes: 0", jbazel.StdoutText, StringComparison.Ordinal);
            Assert.Contains("job-exit=0", jbazel.StdoutText, StringComparison.Ordinal);
        }
        finally
        {
            // On failure the stopped background jbazel outlives script(1); bash printed its pid ("[1] PID").
            if (Regex.Match(jbazel.StdoutText, @"\[1\] ([0-9]+)") is { Success: true } job)
            {
                try
                {
                    using var stopped = System.Diagnostics.Process.GetProcessById(int.Parse(job.Groups[1].Value));
                    if (stopped.ProcessName == "jbazel")
                    {
                        stopped.Kill();
                    }
                }
                catch (ArgumentException)
                {
                    // Already gone: the good case.
                }
            }
        }
    }

    [Fact]
    public async Task CtrlCWhileWaitingForTheAgentExits8()
    {
        var getServerStarted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var getServerCancelled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _remote.GetServer = async (_, context) =>
        {
            getServerStarted.TrySetResult();
            try
            {
                // A cold agent that takes its time.
                await Task.Delay(Timeout.Infinite, context.CancellationToken);
            }
            finally
            {
                getServerCancelled.TrySetResult();
            }

            throw new InvalidOperationException("unreachable");
        };

        await using var jbazel = Start(_workspace.Root, ["build", "//..."]);
        await getServerStarted.Task.WaitAsync(s_timeout);
        await jbazel.SignalAsync("INT");

        Assert.Equal(8, await jbazel.WaitForExitAsync(s_timeout));
        await getServerCancelled.Task.WaitAsync(s_timeout);
        Assert.Empty(_remote.AgentCalls);
    }

    [Fact]
    public async Task WorkspaceRcFileConfiguresJBazelAndCommandLineWins()
    {
        // The environment points nowhere; the workspace .jbazelrc points at the fake; the command line says always.
        File.WriteAllText(Path.Combine(_workspace.Root, ".jbazelrc"), $"# team settings\n--rbs_orchestrator={_remote.Address}\n--rbs_status=never\n");
        await using var jbazel = Start(_workspace.Root, ["build", "--rbs_status=always", "//..."], new() { ["RBS_ORCHESTRATOR"] = null });
        Assert.Equal(0, await jbazel.WaitForExitAsync(s_timeout));
        Assert.StartsWith($"rbs: agent {FakeRemote.AgentId} ", jbazel.StderrText, StringComparison.Ordinal);
        Assert.Single(_remote.GetServerCalls);
    }

    [Fact]
    public async Task TunnelModeSendsRouteAndSessionTokenAndApiKey()
    {
        _remote.GetServer = (request, _) => Task.FromResult(new GetServerResponse
        {
            AgentId = "tunneled-agent",
            Address = _remote.Address.ToString(),
            ConnectMode = ConnectMode.Tunnel,
            Route = "route-for-tunneled-agent",
            SessionToken = "session-token-123",
            Backend = "kubernetes",
            BackendRef = "rbs-agent-abc",
        });

        await using var jbazel = Start(_workspace.Root, ["--rbs_connect", "tunnel", "build", "//..."], new() { ["RBS_API_KEY"] = "key-456" });
        Assert.Equal(0, await jbazel.WaitForExitAsync(s_timeout));

        var (request, orchestratorHeaders) = Assert.Single(_remote.GetServerCalls);
        Assert.Equal(ConnectMode.Tunnel, request.ConnectMode);
        Assert.Equal("Bearer key-456", orchestratorHeaders.GetValue("authorization"));
        var call = Assert.Single(_remote.AgentCalls);
        Assert.Equal("route-for-tunneled-agent", call.Headers.GetValue(RbsHeaders.AgentRoute));
        Assert.Equal("Bearer session-token-123", call.Headers.GetValue("authorization"));
    }

    [Fact]
    public async Task ClosedStdoutPipeStopsQuietly()
    {
        _remote.Execute = async call =>
        {
            var chunk = new byte[64 * 1024];
            Array.Fill(chunk, (byte)'y');
            // Endless output, like `yes`; only the client going away ends it.
            while (!call.Aborted.IsCancellationRequested)
            {
                await call.StdoutAsync(chunk);
            }
        };

        await using var jbazel = Start(_workspace.Root, ["run", "//:yes"], readStdout: false);
        var buffer = new byte[1024];
        var read = await jbazel.StandardOutput.ReadAsync(buffer).AsTask().WaitAsync(s_timeout);
        Assert.True(read > 0);
        jbazel.StandardOutput.Close();

        Assert.Equal(141, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Equal("", jbazel.StderrText);
        await Assert.Single(_remote.AgentCalls).ClientGone.WaitAsync(s_timeout);
    }

    private JBazelProcess Start(
        string cwd,
        IEnumerable<string> args,
        Dictionary<string, string?>? environment = null,
        bool closeStdin = true,
        bool readStdout = true)
    {
        var env = new Dictionary<string, string?> { ["RBS_ORCHESTRATOR"] = _remote.Address.ToString() };
        foreach (var (name, value) in environment ?? [])
        {
            env[name] = value;
        }

        var process = JBazelProcess.Start(output, cwd, _workspace.Home, env, args, readStdout);
        if (closeStdin)
        {
            process.StandardInput.Close();
        }

        return process;
    }

    private static int UnusedPort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
