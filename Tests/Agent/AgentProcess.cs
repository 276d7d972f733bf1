using System.Diagnostics;
using Grpc.Core;
using Grpc.Net.Client;
using Rbs.Agent.Execution;
using Rbs.Shared.Hosting;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.Agent;

/// <summary>A real rbs-agent process (from the test output), for what only a separate process shows: kill -9, SIGTERM.</summary>
internal sealed class AgentProcess : IAsyncDisposable
{
    private static readonly TimeSpan s_readyTimeout = TimeSpan.FromSeconds(60);

    private readonly Process _process;

    private AgentProcess(Process process, string address)
    {
        _process = process;
        Address = address;
        Channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions { MaxReceiveMessageSize = null });
        Client = new Rbs.V1.Agent.AgentClient(Channel);
    }

    public int Pid => _process.Id;

    public string Address { get; }

    public GrpcChannel Channel { get; }

    public Rbs.V1.Agent.AgentClient Client { get; }

    public bool HasExited => _process.HasExited;

    public int ExitCode => _process.ExitCode;

    /// <summary>Starts <c>rbs-agent --agent-id ID --workspace WS --build-tool TOOL --ready-file ...</c> and waits until it listens.</summary>
    public static async Task<AgentProcess> StartAsync(ITestOutputHelper output, string agentId, string workspace, string buildTool, params string[] extraArgs)
    {
        var readyFile = Path.Combine(Path.GetTempPath(), $"rbs-agent-ready-{Guid.NewGuid():N}.json");
        var info = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "rbs-agent"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in (string[])["--agent-id", agentId, "--workspace", workspace, "--build-tool", buildTool, "--ready-file", readyFile, .. extraArgs])
        {
            info.ArgumentList.Add(arg);
        }

        info.Environment["Logging__Console__FormatterName"] = "simple";
        info.Environment["Logging__LogLevel__Rbs"] = "Debug";
        var process = Process.Start(info)!;
        process.OutputDataReceived += (_, e) => TestLog.Write(output, $"{agentId}> {e.Data}");
        process.ErrorDataReceived += (_, e) => TestLog.Write(output, $"{agentId}! {e.Data}");
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            var deadline = DateTime.UtcNow + s_readyTimeout;
            AgentReadyFile? ready;
            while ((ready = ReadyFile.TryRead<AgentReadyFile>(readyFile)) is null)
            {
                Assert.False(process.HasExited, $"agent {agentId} exited with {(process.HasExited ? process.ExitCode : 0)} before writing its ready file");
                Assert.True(DateTime.UtcNow < deadline, $"agent {agentId}: no ready file within {s_readyTimeout}");
                await Task.Delay(50);
            }

            File.Delete(readyFile);
            return new AgentProcess(process, ready.Address);
        }
        catch
        {
            Kill(process);
            process.Dispose();
            throw;
        }
    }

    /// <summary>Opens an ExecuteCommand stream and sends its start frame.</summary>
    public async Task<AsyncDuplexStreamingCall<ClientFrame, ServerFrame>> StartCommandAsync(StartCommand start, CancellationToken cancellationToken)
    {
        var call = Client.ExecuteCommand(cancellationToken: cancellationToken);
        await call.RequestStream.WriteAsync(new ClientFrame { Start = start }, cancellationToken);
        return call;
    }

    public void Signal(int signal) => Assert.Equal(0, Native.kill(_process.Id, signal));

    public Task WaitForExitAsync(TimeSpan timeout) => _process.WaitForExitAsync().WaitAsync(timeout);

    public async ValueTask DisposeAsync()
    {
        Channel.Dispose();
        Kill(_process);
        await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
        _process.Dispose();
    }

    private static void Kill(Process process)
    {
        if (!process.HasExited)
        {
            // Only the agent itself: what it started must go by itself (that is what the tests check).
            process.Kill(entireProcessTree: false);
        }
    }
}
