using System.Diagnostics;
using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Rbs.Shared.Hosting;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.Gateway;

[Collection(TunnelCollection.Name)]
public sealed class GatewayProcessTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly TunnelTestEnvironment _env = new(output);
    private readonly string _dir = Directory.CreateTempSubdirectory("rbs-gateway-test-").FullName;

    // Standard output of the gateways started with their output piped.
    private readonly System.Collections.Concurrent.ConcurrentQueue<string> _lines = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        await _env.StopAllAsync();
        Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public async Task GatewayExecutableTakesItsFlagsAndWritesTheReadyFile()
    {
        var (process, readyFile) = await StartKeyedAsync();
        using var _ = process;
        try
        {
            await TestWait.EventuallyAsync(() => File.Exists(readyFile) || process.HasExited, "ready file", timeout: TimeSpan.FromSeconds(30));
            Assert.False(process.HasExited, "rbs-gateway exited early");
            var (publicAddress, agentAddress, pid) = ReadyFile.TryRead<GatewayReadyFile>(readyFile) ?? throw new InvalidDataException($"{readyFile} is not a gateway ready file");
            Assert.Equal(process.Id, pid);
            Assert.StartsWith("http://127.0.0.1:", agentAddress, StringComparison.Ordinal);

            // A stand-in agent registers with the spawned gateway using the same key, and a client reaches it.
            var agent = await _env.StartAgentAsync("agent-p", agentAddress, _env.JoinToken("agent-p"), spares: 1);
            await agent.Status.FirstConnected.WaitAsync(TunnelTestEnvironment.Timeout);
            var client = new V1.Agent.AgentClient(_env.Channel(publicAddress));
            var result = await TunnelTestEnvironment.RunBytesAsync(client, TunnelTestEnvironment.Route("agent-p", _env.SessionToken("agent-p")), 65_537, seed: 11, exitCode: 2)
                .WaitAsync(TunnelTestEnvironment.Timeout);
            Assert.Equal(DeterministicBytes.ExpectedSha256(65_537, 11), result.Sha256);
            Assert.Equal(2, result.ExitCode);
        }
        finally
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync().WaitAsync(TunnelTestEnvironment.Timeout);
        }
    }

    [Fact]
    public async Task HeapLimitBecomesTheRuntimesHeapHardLimitAndStreamsStillRun()
    {
        var (process, readyFile) = await StartKeyedAsync("--heap-limit", "335544320");
        using var _ = process;
        try
        {
            await TestWait.EventuallyAsync(() => File.Exists(readyFile) || process.HasExited, "ready file", timeout: TimeSpan.FromSeconds(30));
            Assert.False(process.HasExited, "rbs-gateway exited early");
            // The runtime itself reports the new limit as the memory the heap may use (EventId 190).
            await TestWait.EventuallyAsync(() => _lines.Any(l => l.Contains("GC heap limit: 320 MiB (Gateway:HeapLimit); the heap may use 320 MiB", StringComparison.Ordinal)),
                "the heap limit log line", timeout: TimeSpan.FromSeconds(10));

            var (publicAddress, agentAddress, _) = ReadyFile.TryRead<GatewayReadyFile>(readyFile) ?? throw new InvalidDataException($"{readyFile} is not a gateway ready file");
            var agent = await _env.StartAgentAsync("agent-h", agentAddress, _env.JoinToken("agent-h"), spares: 1);
            await agent.Status.FirstConnected.WaitAsync(TunnelTestEnvironment.Timeout);
            var client = new V1.Agent.AgentClient(_env.Channel(publicAddress));
            var result = await TunnelTestEnvironment.RunBytesAsync(client, TunnelTestEnvironment.Route("agent-h", _env.SessionToken("agent-h")), 1_000_003, seed: 5)
                .WaitAsync(TunnelTestEnvironment.Timeout);
            Assert.Equal(DeterministicBytes.ExpectedSha256(1_000_003, 5), result.Sha256);
        }
        finally
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync().WaitAsync(TunnelTestEnvironment.Timeout);
        }
    }

    [Fact]
    public async Task GatewayWithoutATokenKeyRefusesToStartWithAClearMessage()
    {
        using var process = Start(false, "--public-listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0");
        var stderr = process.StandardError.ReadToEndAsync();
        var stdout = process.StandardOutput.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TunnelTestEnvironment.Timeout);
        var text = await stderr + await stdout;
        output.WriteLine(text);
        Assert.NotEqual(0, process.ExitCode);
        Assert.Contains("--token-key-file", text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task PublicEndpointServesTlsWhenACertificateIsConfigured()
    {
        using var rsa = RSA.Create(2048);
        var request = new CertificateRequest("CN=rbs-gateway-test", rsa, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(System.Net.IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        var pfx = Path.Combine(_dir, "gateway.pfx");
        await File.WriteAllBytesAsync(pfx, certificate.Export(X509ContentType.Pfx));

        var gateway = await _env.StartGatewayAsync(certificatePath: pfx);
        Assert.StartsWith("https://", gateway.PublicAddress, StringComparison.Ordinal);
        var agent = await _env.StartAgentAsync("agent-tls", gateway.AgentAddress, _env.JoinToken("agent-tls"), spares: 1);
        await gateway.WaitRegisteredAsync("agent-tls");

        var thumbprint = certificate.GetCertHashString(HashAlgorithmName.SHA256);
        var handler = new SocketsHttpHandler
        {
            SslOptions = new SslClientAuthenticationOptions
            {
                // Pin the test's self-signed certificate.
                RemoteCertificateValidationCallback = (_, cert, _, _) => cert is not null && cert.GetCertHashString(HashAlgorithmName.SHA256) == thumbprint,
            },
        };
        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress, handler));
        var status = await client.GetStatusAsync(new GetStatusRequest(), TunnelTestEnvironment.Route("agent-tls", _env.SessionToken("agent-tls")))
            .ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal("agent-tls", status.AgentId);
    }

    /// <param name="pipeToTestOutput">Drain stdout/stderr into the test log (else the caller reads them).</param>
    /// <summary>rbs-gateway on ephemeral ports with the test's token key and a ready file, its output piped to the test's.</summary>
    private async Task<(Process Process, string ReadyFile)> StartKeyedAsync(params string[] extra)
    {
        var keyFile = Path.Combine(_dir, "token.key");
        await File.WriteAllTextAsync(keyFile, _env.Key + "\n");
        var readyFile = Path.Combine(_dir, "ready.json");
        return (Start(true,
            ["--public-listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0", "--orchestrator", "http://127.0.0.1:1",
                "--token-key-file", keyFile, "--ready-file", readyFile, .. extra]), readyFile);
    }

    private Process Start(bool pipeToTestOutput, params string[] args)
    {
        var exe = Path.Combine(AppContext.BaseDirectory, "rbs-gateway");
        var info = new ProcessStartInfo(exe)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        output.WriteLine($"starting {exe} {string.Join(' ', args)}");
        var process = Process.Start(info)!;
        if (pipeToTestOutput)
        {
            process.OutputDataReceived += (_, e) =>
            {
                if (e.Data is { } line)
                {
                    _lines.Enqueue(line);
                }

                WriteLine(e.Data);
            };
            process.ErrorDataReceived += (_, e) => WriteLine(e.Data);
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
        }

        return process;
    }

    private void WriteLine(string? line)
    {
        if (line is not null)
        {
            TestLog.Write(output, "[rbs-gateway] " + line);
        }
    }
}
