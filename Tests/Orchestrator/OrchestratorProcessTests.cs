using System.Diagnostics;
using Grpc.Net.Client;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Shared.Hosting;
using Rbs.Tests.Orchestrator.Infrastructure;
using Rbs.V1;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Orchestrator;

/// <summary>The real rbs-orchestrator executable: flags, stdout line, ready file, start-up errors, shutdown.</summary>
public sealed class OrchestratorProcessTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly OrchestratorTestContext _context = new(output);

    public Task InitializeAsync() => _context.InitializeAsync();

    public Task DisposeAsync() => _context.DisposeAsync();

    [Fact]
    public async Task WithoutLocalModeOrABackendItRefusesToStartWithAClearMessage()
    {
        var (exitCode, stdout, stderr) = await RunToExitAsync("--port", "0", "--state-path", _context.StatePath);

        Assert.Equal(2, exitCode);
        Assert.Contains("no compute backend configured: pass --local-mode", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("listening", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task LocalModeAnnouncesItsAddressServesGetServerAndExitsCleanlyOnSigterm()
    {
        var readyFile = Path.Combine(_context.Root, "orchestrator.json");
        var workspace = _context.CreateWorkspace("main");
        using var process = Start(
            "--local-mode", "--port", "0", "--state-path", _context.StatePath, "--ready-file", readyFile,
            "--agent-path", TestAgents.Fake);
        try
        {
            var line = await process.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(30));
            output.WriteLine($"stdout: {line}");
            Assert.NotNull(line);
            Assert.Matches(@"^rbs-orchestrator listening on http://127\.0\.0\.1:\d+ \(local mode, state .+orchestrator\.db\)$", line);
            Assert.Contains(_context.StatePath, line, StringComparison.Ordinal);

            var (address, pid) = await TestWait.EventuallyAsync(() => ReadyFile.TryRead<OrchestratorReadyFile>(readyFile));
            Assert.Equal(process.Id, pid);
            Assert.Contains(address, line, StringComparison.Ordinal);

            using var channel = GrpcChannel.ForAddress(address);
            var client = new V1.Orchestrator.OrchestratorClient(channel);
            var response = await client.GetServerAsync(new GetServerRequest { RepoHash = "repo-1", SourcePath = workspace })
                .ResponseAsync.WaitAsync(TimeSpan.FromSeconds(30));
            Assert.False(response.Warm);

            UnixProcesses.Signal(process.Id, UnixProcesses.SigTerm);
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
            output.WriteLine(await process.StandardError.ReadToEndAsync());

            Assert.Equal(0, process.ExitCode);
            Assert.False(File.Exists(readyFile), "the ready file should be removed on shutdown");
            // The agent is not a casualty of the orchestrator's exit.
            Assert.True(UnixProcesses.IsAgentProcess(GetServerTests.Pid(response), response.AgentId));
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }
    }

    private static Process Start(params string[] args)
    {
        var startInfo = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "rbs-orchestrator"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in args)
        {
            startInfo.ArgumentList.Add(arg);
        }

        return Process.Start(startInfo)!;
    }

    private async Task<(int ExitCode, string Stdout, string Stderr)> RunToExitAsync(params string[] args)
    {
        using var process = Start(args);
        try
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
            output.WriteLine($"exit {process.ExitCode}\nstdout: {await stdout}\nstderr: {await stderr}");
            return (process.ExitCode, await stdout, await stderr);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }
    }
}
