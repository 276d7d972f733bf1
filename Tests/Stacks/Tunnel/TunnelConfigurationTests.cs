using Grpc.Core;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Gateway;
using Rbs.Orchestrator.Hosting;
using Rbs.Orchestrator.Security;
using Rbs.Shared.Tokens;
using Rbs.V1;

namespace Rbs.Tests.Stacks.Tunnel;

/// <summary>API keys and the gateway options: what a misconfigured orchestrator or a wrong client is told.</summary>
public sealed class TunnelConfigurationTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("rbs-tunnel-config-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void ApiKeysFromConfigurationAndFileMapToTheirUsers()
    {
        var file = Path.Combine(_dir, "keys");
        File.WriteAllText(file, "# comment\n\n  carol : carol-secret  \n");
        var authenticator = new ApiKeyAuthenticator(Options.Create(new OrchestratorOptions
        {
            ApiKeys = [new ApiKeyEntry { User = "alice", Key = "alice-secret" }],
            ApiKeysFile = file,
        }));

        Assert.Equal(2, authenticator.Count);
        Assert.Equal("alice", authenticator.Authenticate(Bearer("alice-secret")));
        Assert.Equal("carol", authenticator.Authenticate(Bearer("carol-secret")));
        Assert.Equal("carol", authenticator.Authenticate(new Metadata { { "authorization", "bearer carol-secret" } }));

        var wrong = Assert.Throws<RpcException>(() => authenticator.Authenticate(Bearer("alice-secret-")));
        Assert.Equal(StatusCode.Unauthenticated, wrong.StatusCode);
        Assert.Equal("the API key was not accepted", wrong.Status.Detail);

        var missing = Assert.Throws<RpcException>(() => authenticator.Authenticate([]));
        Assert.Equal("this orchestrator requires an API key: pass --rbs_api_key or set RBS_API_KEY", missing.Status.Detail);
    }

    [Fact]
    public void WithoutKeysLocalModeIsTheLocalUserAndOtherModesRefuse()
    {
        var local = new ApiKeyAuthenticator(Options.Create(new OrchestratorOptions { LocalMode = true }));
        Assert.Equal("local", local.Authenticate([]));
        Assert.Equal("local", local.Authenticate(Bearer("anything")));

        var cluster = new ApiKeyAuthenticator(Options.Create(new OrchestratorOptions { Backend = "kubernetes" }));
        var refused = Assert.Throws<RpcException>(() => cluster.Authenticate(Bearer("anything")));
        Assert.Equal(StatusCode.Unauthenticated, refused.StatusCode);
        Assert.StartsWith("no API keys configured", refused.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public void BadKeyFilesAndBadGatewaySettingsFailStartupNamingTheFlag()
    {
        var file = Path.Combine(_dir, "bad-keys");
        File.WriteAllText(file, "alice-without-a-colon\n");
        var orchestrator = new OrchestratorOptions { LocalMode = true, ApiKeysFile = file };
        var failures = new OrchestratorOptionsValidator().Validate(null, orchestrator);
        Assert.True(failures.Failed);
        Assert.Contains("line 1: expected 'user:key'", failures.FailureMessage, StringComparison.Ordinal);

        var gatewayValidator = new OrchestratorGatewayOptionsValidator(Options.Create(new OrchestratorOptions { LocalMode = true }));
        var noKey = gatewayValidator.Validate(null, new OrchestratorGatewayOptions { PublicAddress = "10.0.0.1:8080", AgentAddress = "http://127.0.0.1:8081" });
        Assert.Contains("--gateway-public-address '10.0.0.1:8080' must be an absolute http:// or https:// URL", noKey.FailureMessage, StringComparison.Ordinal);
        Assert.Contains("no token key: pass --token-key-file", noKey.FailureMessage, StringComparison.Ordinal);

        var tunnelWithoutGateway = new OrchestratorGatewayOptionsValidator(Options.Create(new OrchestratorOptions { LocalMode = true, DefaultConnectMode = "tunnel" }))
            .Validate(null, new OrchestratorGatewayOptions());
        Assert.Contains("--default-connect-mode tunnel needs a gateway", tunnelWithoutGateway.FailureMessage, StringComparison.Ordinal);

        var keyFile = Path.Combine(_dir, "token.key");
        File.WriteAllText(keyFile, RbsTokenKeyRing.GenerateKey());
        var good = new OrchestratorGatewayOptions { PublicAddress = "https://rbs.example.com", AgentAddress = "http://127.0.0.1:8081", TokenKeyFile = keyFile };
        Assert.True(gatewayValidator.Validate(null, good).Succeeded);
        Assert.Equal(ConnectMode.Tunnel, new OrchestratorOptions().GetDefaultConnectMode(good));
        Assert.Equal(ConnectMode.Direct, new OrchestratorOptions { DefaultConnectMode = "direct" }.GetDefaultConnectMode(good));
        Assert.Equal(ConnectMode.Direct, new OrchestratorOptions().GetDefaultConnectMode(new OrchestratorGatewayOptions()));
    }

    private static Metadata Bearer(string key) => new() { { "authorization", "Bearer " + key } };
}
