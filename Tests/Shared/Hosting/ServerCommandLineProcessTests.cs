using System.Net;
using System.Net.Sockets;

namespace Rbs.Tests.Shared.Hosting;

/// <summary>
/// Issue 11 item 6: each server, as a real process, answers --help with its usage (exit 0), and every bad command line
/// or setting ends with one actionable line on stderr and a non-zero exit, never a .NET stack trace.
/// </summary>
public sealed class ServerCommandLineProcessTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(60);

    private readonly string _root = Directory.CreateTempSubdirectory("rbs-cmdline-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Theory]
    [InlineData("rbs-orchestrator", "--local-mode", "Orchestrator__Port")]
    [InlineData("rbs-agent", "--workspace DIR", "Agent__Listen")]
    [InlineData("rbs-gateway", "--public-listen HOST:PORT", "Gateway__TokenKeyFile")]
    public async Task HelpPrintsTheUsageWithFlagsDefaultsAndEnvironmentSpellingsAndExits0(string server, string flag, string environmentVariable)
    {
        await using var process = ServerProcess.Start(output, server, ["--help"]);

        Assert.Equal(0, await process.WaitForExitAsync(s_timeout));
        var usage = string.Join('\n', process.StdoutLines);
        Assert.StartsWith($"{server}: ", usage, StringComparison.Ordinal);
        Assert.Contains($"Usage: {server} [options]", usage, StringComparison.Ordinal);
        Assert.Contains(flag, usage, StringComparison.Ordinal);
        Assert.Contains($"env {environmentVariable}; default ", usage, StringComparison.Ordinal);
        Assert.Contains(":Limits:HandshakeTimeout", usage, StringComparison.Ordinal);
        Assert.Empty(process.StderrLines);
    }

    public static TheoryData<string, string[], int, string> BadSettings => new()
    {
        // Unknown flags, a flag without its value, a stray word: usage errors.
        { "rbs-orchestrator", ["--local-mode", "--prot", "0"], 2, "rbs-orchestrator: unknown option '--prot'. Run 'rbs-orchestrator --help' for the options." },
        { "rbs-agent", ["--agent-id"], 2, "rbs-agent: --agent-id needs a value (--agent-id ID or --agent-id=ID). Run 'rbs-agent --help' for the options." },
        { "rbs-gateway", ["public-listen=1"], 2, "rbs-gateway: unexpected argument 'public-listen=1'" },
        // A value the binder cannot convert names the flag and what it expects.
        { "rbs-orchestrator", ["--local-mode", "--port", "fifty"], 2, "rbs-orchestrator: invalid value 'fifty' for --port (Orchestrator:Port): expected a whole number." },
        { "rbs-agent", ["--agent-id", "a", "--workspace", "/tmp", "--build-tool", "/bin/sh", "--idle-exit-after", "soon"], 2, "rbs-agent: invalid value 'soon' for --idle-exit-after (Agent:IdleExitAfter): expected a duration" },
        // ValidateOnStart failures: the validator's own words, one line.
        { "rbs-orchestrator", ["--port", "0"], 2, "rbs-orchestrator: invalid configuration: no compute backend configured: pass --local-mode" },
        { "rbs-agent", [], 2, "rbs-agent: invalid configuration: Agent:AgentId is required (--agent-id)." },
        { "rbs-gateway", ["--public-listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0"], 2, "rbs-gateway: invalid configuration: A token key is required" },
        { "rbs-gateway", ["--public-listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0", "--token-key-file", "/nonexistent/rbs-key"], 2, "rbs-gateway: invalid configuration: --token-key-file '/nonexistent/rbs-key' is not a usable token key:" },
        { "rbs-gateway", ["--public-listen", "somewhere", "--token-key-file", "KEY"], 2, "rbs-gateway: invalid configuration: 'somewhere' is not a listen address of the form host:port" },
        { "rbs-gateway", ["--token-key-file", "KEY", "--Gateway:Limits:MaxConnections=0"], 2, "rbs-gateway: invalid configuration: Gateway:Limits:MaxConnections must be at least 1, not 0." },
    };

    [Theory]
    [MemberData(nameof(BadSettings))]
    public async Task ABadCommandLineOrSettingIsOneActionableLineAndANonZeroExit(string server, string[] args, int exitCode, string expected)
    {
        var keyFile = Path.Combine(_root, "key");
        await File.WriteAllTextAsync(keyFile, Convert.ToBase64String(new byte[32]));
        var arguments = args.Select(a => a == "KEY" ? keyFile : a).Concat(StateArgs(server));

        await using var process = ServerProcess.Start(output, server, arguments);

        Assert.Equal(exitCode, await process.WaitForExitAsync(s_timeout));
        AssertOneLine(process, expected);
    }

    [Theory]
    [InlineData("rbs-orchestrator", "--port", "(--port, --listen-address)")]
    [InlineData("rbs-agent", "--listen", "(--listen)")]
    [InlineData("rbs-gateway", "--public-listen", "(--public-listen, --agent-listen)")]
    public async Task AnAddressInUseIsOneLineNamingTheFlagsAndExit1(string server, string flag, string flags)
    {
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        var port = ((IPEndPoint)taken.LocalEndpoint).Port;
        var keyFile = Path.Combine(_root, "key");
        await File.WriteAllTextAsync(keyFile, Convert.ToBase64String(new byte[32]));
        string[] args = server switch
        {
            "rbs-orchestrator" => ["--local-mode", flag, port.ToString(System.Globalization.CultureInfo.InvariantCulture), .. StateArgs(server)],
            "rbs-agent" => ["--agent-id", "a", "--workspace", _root, "--build-tool", "/bin/sh", flag, $"127.0.0.1:{port}"],
            _ => [flag, $"127.0.0.1:{port}", "--agent-listen", "127.0.0.1:0", "--token-key-file", keyFile],
        };

        await using var process = ServerProcess.Start(output, server, args);

        Assert.Equal(1, await process.WaitForExitAsync(s_timeout));
        AssertOneLine(process, $"{server}: cannot listen: Failed to bind to address http://127.0.0.1:{port}: address already in use");
        Assert.EndsWith($"Stop what is using that address or choose another one {flags}.", process.StderrLines[0], StringComparison.Ordinal);
    }

    private string[] StateArgs(string server) =>
        server == "rbs-orchestrator" ? ["--state-path", Path.Combine(_root, "state", "orchestrator.db")] : [];

    private static void AssertOneLine(ServerProcess process, string expectedStart)
    {
        var line = Assert.Single(process.StderrLines);
        Assert.StartsWith(expectedStart, line, StringComparison.Ordinal);
        // Never a stack trace, on either stream.
        Assert.DoesNotContain(process.StdoutLines.Concat(process.StderrLines), l => l.TrimStart().StartsWith("at ", StringComparison.Ordinal));
        Assert.DoesNotContain(process.StdoutLines.Concat(process.StderrLines), l => l.Contains("Unhandled exception", StringComparison.Ordinal));
    }
}
