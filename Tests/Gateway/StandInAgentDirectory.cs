using System.Collections.Concurrent;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Rbs.Shared.Tokens;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.Gateway;

/// <summary>
/// A stand-in orchestrator for the gateway tests: real Kestrel serving the real <c>rbs.v1.AgentDirectory</c> contract.
/// It answers "live" for the agents the test put in <see cref="Live"/> (as agent id → user) and "not live" for every
/// other, and it checks the gateway's internal token with the test's key, as the real orchestrator does. The real
/// orchestrator's answers (state store, compute probe) are tested with real processes in Tests/Stacks/Tunnel.
/// </summary>
internal sealed class StandInAgentDirectory : IAsyncDisposable
{
    private readonly WebApplication _app;

    private StandInAgentDirectory(WebApplication app, DirectoryService service)
    {
        _app = app;
        Service = service;
    }

    /// <summary>Agents the stand-in confirms: agent id → owner.</summary>
    public ConcurrentDictionary<string, string> Live => Service.Live;

    /// <summary>Questions asked so far.</summary>
    public int Questions => Volatile.Read(ref Service.QuestionCount);

    public string Address => _app.Urls.First();

    private DirectoryService Service { get; }

    /// <param name="timeProvider">The gateway's clock: a token is checked against the clock of the host that minted it, give or take the skew allowance.</param>
    public static async Task<StandInAgentDirectory> StartAsync(string key, ITestOutputHelper output, TimeProvider? timeProvider = null)
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { EnvironmentName = "Production" });
        builder.Logging.ClearProviders().AddProvider(new TestOutputLoggerProvider(output, "directory"));
        builder.WebHost.ConfigureKestrel(k => k.Listen(System.Net.IPAddress.Loopback, 0, l => l.Protocols = HttpProtocols.Http2));
        builder.Services.AddGrpc();
        var service = new DirectoryService(new RbsTokenService(Convert.FromBase64String(key), timeProvider ?? TimeProvider.System));
        builder.Services.AddSingleton(service);
        var app = builder.Build();
        app.MapGrpcService<DirectoryService>();
        await app.StartAsync().WaitAsync(TunnelTestEnvironment.Timeout);
        return new StandInAgentDirectory(app, service);
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    internal sealed class DirectoryService(RbsTokenService tokens) : AgentDirectory.AgentDirectoryBase
    {
        public readonly ConcurrentDictionary<string, string> Live = new(StringComparer.Ordinal);
        public int QuestionCount;

        public override async Task<ConfirmAgentResponse> ConfirmAgent(ConfirmAgentRequest request, ServerCallContext context)
        {
            Interlocked.Increment(ref QuestionCount);
            var authorization = context.RequestHeaders.GetValue("authorization") ?? "";
            var validation = await tokens.ValidateAsync(authorization.StartsWith("Bearer ", StringComparison.Ordinal) ? authorization[7..] : null, RbsTokenKind.Internal);
            if (!validation.IsValid)
            {
                throw new RpcException(new Status(StatusCode.Unauthenticated, "internal token rejected: " + validation.Failure));
            }

            return Live.TryGetValue(request.AgentId, out var owner) && owner == request.UserId
                ? new ConfirmAgentResponse { Live = true }
                : new ConfirmAgentResponse { Live = false, Reason = "the stand-in orchestrator does not know it" };
        }
    }
}
