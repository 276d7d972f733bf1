using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Grpc.Net.Client;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.Orchestrator.State;

/// <summary>
/// One real <c>rbs-orchestrator</c> subprocess (the apphost in the test output) on 127.0.0.1:0, with its
/// stdout and stderr mirrored to the test output and kept for assertions.
/// Disposal kills it if it still runs.
/// </summary>
internal sealed partial class OrchestratorReplicaProcess : IAsyncDisposable
{
    private readonly ConcurrentQueue<string> _lines = new();
    private readonly TaskCompletionSource<string> _address = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly ITestOutputHelper _output;
    private readonly Process _process;
    private GrpcChannel? _channel;

    private OrchestratorReplicaProcess(string name, Process process, ITestOutputHelper output)
    {
        Name = name;
        _process = process;
        _output = output;
    }

    public string Name { get; }

    public int Pid => _process.Id;

    public string Address { get; private set; } = "";

    public bool HasExited => _process.HasExited;

    public V1.Orchestrator.OrchestratorClient Client { get; private set; } = null!;

    /// <summary>Everything it printed so far, stdout and stderr interleaved.</summary>
    public IReadOnlyList<string> Lines => [.. _lines];

    /// <summary>Starts the process and returns it unconnected (for start-up failure tests).</summary>
    public static OrchestratorReplicaProcess Launch(string name, string workingDirectory, ITestOutputHelper output, params string[] args)
    {
        var startInfo = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "rbs-orchestrator"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            // Not the test output directory: its appsettings.json files belong to other executables.
            WorkingDirectory = workingDirectory,
        };
        foreach (var arg in args)
        {
            startInfo.ArgumentList.Add(arg);
        }

        // Request logging is noise here; the orchestrator's own entries are what tests count.
        startInfo.Environment["Logging__LogLevel__Default"] = "Information";
        startInfo.Environment["Logging__LogLevel__Microsoft.AspNetCore"] = "Warning";
        startInfo.Environment.Remove("ConnectionStrings__rbs");
        startInfo.Environment.Remove("Orchestrator__Postgres__ConnectionString");

        var process = Process.Start(startInfo) ?? throw new InvalidOperationException("rbs-orchestrator did not start");
        var replica = new OrchestratorReplicaProcess(name, process, output);
        process.OutputDataReceived += (_, e) => replica.OnLine(e.Data, stdout: true);
        process.ErrorDataReceived += (_, e) => replica.OnLine(e.Data, stdout: false);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        replica.Log($"started pid {process.Id}: rbs-orchestrator {string.Join(' ', args)}");
        return replica;
    }

    /// <summary>Starts the process and waits for its "listening on" line.</summary>
    public static async Task<OrchestratorReplicaProcess> StartAsync(string name, string workingDirectory, ITestOutputHelper output, params string[] args)
    {
        var replica = Launch(name, workingDirectory, output, args);
        try
        {
            var exited = replica._process.WaitForExitAsync();
            var first = await Task.WhenAny(replica._address.Task, exited).WaitAsync(TimeSpan.FromSeconds(60));
            if (first != replica._address.Task)
            {
                throw new InvalidOperationException($"{name} exited with code {replica._process.ExitCode} before listening");
            }

            replica.Address = await replica._address.Task;
            replica._channel = GrpcChannel.ForAddress(replica.Address);
            replica.Client = new V1.Orchestrator.OrchestratorClient(replica._channel);
            return replica;
        }
        catch
        {
            await replica.DisposeAsync();
            throw;
        }
    }

    public Task<GetServerResponse> GetServerAsync(string repoHash, string sourcePath, TimeSpan timeout) =>
        Client.GetServerAsync(new GetServerRequest { RepoHash = repoHash, SourcePath = sourcePath }).ResponseAsync.WaitAsync(timeout);

    /// <summary>SIGKILL: the replica dies mid-whatever, like a crashed node.</summary>
    public async Task KillAsync()
    {
        UnixProcesses.Signal(_process.Id, UnixProcesses.SigKill);
        await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
        Log("killed (SIGKILL)");
    }

    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        await _process.WaitForExitAsync().WaitAsync(timeout);
        return _process.ExitCode;
    }

    public int CountLines(string fragment) => Lines.Count(line => line.Contains(fragment, StringComparison.Ordinal));

    public async ValueTask DisposeAsync()
    {
        _channel?.Dispose();
        if (!_process.HasExited)
        {
            // SIGTERM first so it shuts down like in production; agents are not its children to kill.
            UnixProcesses.Signal(_process.Id, UnixProcesses.SigTerm);
            try
            {
                await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
            }
            catch (TimeoutException)
            {
                _process.Kill();
            }
        }

        _process.Dispose();
    }

    /// <summary>
    /// Live agent processes (command line has <c>--agent-id</c>) whose command line mentions
    /// <paramref name="scope"/> (the test's temp directory: workspaces and ready files live there), with
    /// their agent ids. Finds orphans nobody recorded, not just the agents the store knows.
    /// </summary>
    public static IReadOnlyList<(int Pid, string AgentId)> AgentProcesses(string scope)
    {
        var result = new List<(int, string)>();
        foreach (var entry in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(entry), NumberStyles.None, CultureInfo.InvariantCulture, out var pid))
            {
                continue;
            }

            string cmdline;
            try
            {
                cmdline = Encoding.UTF8.GetString(File.ReadAllBytes(Path.Combine(entry, "cmdline"))).Replace('\0', ' ');
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue;
            }

            // The launcher shell ("/bin/sh -c exec setsid ...") is the agent a moment later: same pid.
            var match = AgentIdArgument().Match(cmdline);
            if (match.Success && cmdline.Contains(scope, StringComparison.Ordinal))
            {
                result.Add((pid, match.Groups[1].Value));
            }
        }

        return result;
    }

    /// <summary>SIGKILLs every agent <see cref="AgentProcesses"/> finds (and its process group): test clean-up.</summary>
    public static void KillAgents(string scope)
    {
        foreach (var (pid, _) in AgentProcesses(scope))
        {
            UnixProcesses.Signal(-pid, UnixProcesses.SigKill);
            UnixProcesses.Signal(pid, UnixProcesses.SigKill);
        }
    }

    private void OnLine(string? line, bool stdout)
    {
        if (line is null)
        {
            return;
        }

        _lines.Enqueue(line);
        if (stdout && !_address.Task.IsCompleted && ListeningLine().Match(line) is { Success: true } match)
        {
            _address.TrySetResult(match.Groups[1].Value);
        }

        Log(line);
    }

    private void Log(string text) => TestLog.Write(_output, $"{Name}: {text}");

    [GeneratedRegex(@"^rbs-orchestrator listening on (http://127\.0\.0\.1:\d+) ")]
    private static partial Regex ListeningLine();

    [GeneratedRegex(@"--agent-id (a[0-9a-f]{20})\b")]
    private static partial Regex AgentIdArgument();
}
