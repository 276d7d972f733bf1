using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Hosting;
using Rbs.Shared.Tokens;
using Rbs.V1;

namespace Rbs.Orchestrator.Gateway;

/// <summary>
/// The gateway this orchestrator hands tunnel-mode clients to (section <c>Orchestrator:Gateway</c>, env
/// <c>Orchestrator__Gateway__Key</c>). Configuring it makes every new agent dial out to the gateway (process agents
/// also keep listening on loopback, pods on their pod port), and makes tunnel the default connect mode.
/// </summary>
internal sealed class OrchestratorGatewayOptions
{
    public const string SectionName = "Orchestrator:Gateway";

    /// <summary>
    /// The gateway's public endpoint as clients dial it, e.g. <c>http://10.250.0.1:8080</c> or
    /// <c>https://rbs.example.com</c> (<c>--gateway-public-address</c>). Returned as the address of tunnel-mode
    /// GetServer answers. Default: none (no gateway; tunnel mode unavailable).
    /// </summary>
    public string? PublicAddress { get; set; }

    /// <summary>
    /// The gateway's agent endpoint, e.g. <c>http://127.0.0.1:8081</c> (<c>--gateway-agent-address</c>): agents dial
    /// it (WebSocket tunnels) and the orchestrator asks it whether an agent is registered. Must be reachable from
    /// agents and from the orchestrator. Default: none; required with <see cref="PublicAddress"/>.
    /// </summary>
    public string? AgentAddress { get; set; }

    /// <summary>
    /// Base64 HMAC key (≥ 32 bytes) shared with the gateway; signs join, session and internal tokens. Default: none
    /// (then <see cref="TokenKeyFile"/> is required when a gateway is configured).
    /// </summary>
    public string? TokenKey { get; set; }

    /// <summary>File holding the base64 token key, e.g. a mounted secret (<c>--token-key-file</c>). Default: none.</summary>
    public string? TokenKeyFile { get; set; }

    /// <summary>
    /// Further base64 keys a token may be signed with during a key rotation (separated by whitespace or commas), beside
    /// the current key that signs: the next key before every host signs with it, or the previous one until the tokens it
    /// signed have expired. Env <c>Orchestrator__Gateway__AcceptedTokenKeys</c>. Default: none (docs/connect-modes.md).
    /// </summary>
    public string? AcceptedTokenKeys { get; set; }

    /// <summary>File of such keys, one per line (<c>--accepted-token-keys-file</c>). Default: none.</summary>
    public string? AcceptedTokenKeysFile { get; set; }

    /// <summary>Tolerated clock difference between the hosts that mint and check tokens (<c>nbf</c>/<c>exp</c>). Default: 00:00:30.</summary>
    public TimeSpan TokenClockSkew { get; set; } = RbsTokenService.DefaultClockSkew;

    /// <summary>
    /// Whether tunnel-mode GetServer answers tell clients to ask the gateway for a relayed connection
    /// (<c>GetServerResponse.relay</c>; docs/connect-modes.md, "The relay"). Needs the clients' TCP to reach the gateway's
    /// public endpoint as is: direct, through an L4 load balancer or TLS passthrough. Behind an HTTP/2-terminating
    /// proxy (an L7 ingress) set it to false, or every command would first try a relay that proxy cannot carry.
    /// Env <c>Orchestrator__Gateway__Relay</c>. Default: true.
    /// </summary>
    public bool Relay { get; set; } = true;

    /// <summary>Lifetime of the join token an agent registers with (the gateway renews it on every connect). Default: 00:10:00.</summary>
    public TimeSpan JoinTokenLifetime { get; set; } = TimeSpan.FromMinutes(10);

    /// <summary>Lifetime of the session token a tunnel-mode GetServer returns (one build must fit). Default: 12:00:00.</summary>
    public TimeSpan SessionTokenLifetime { get; set; } = TimeSpan.FromHours(12);

    /// <summary>How long a tunnel-mode GetServer waits for the agent to register at the gateway. Default: 00:00:30.</summary>
    public TimeSpan RegistrationTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>True when either gateway address is set (then both and a key are required).</summary>
    public bool IsConfigured => !string.IsNullOrWhiteSpace(PublicAddress) || !string.IsNullOrWhiteSpace(AgentAddress);

    /// <summary>The current key (<see cref="TokenKey"/> or <see cref="TokenKeyFile"/>) and the accepted ones; throws <see cref="FormatException"/>/<see cref="IOException"/> with a clear message.</summary>
    public RbsTokenKeyRing ReadTokenKeys() => RbsTokenKeyRing.Load(TokenKey, TokenKeyFile, AcceptedTokenKeys, AcceptedTokenKeysFile);

    internal static bool IsHttpUrl(string? value, out Uri? uri) =>
        Uri.TryCreate(value?.Trim(), UriKind.Absolute, out uri) && (uri.Scheme == Uri.UriSchemeHttp || uri.Scheme == Uri.UriSchemeHttps);
}

/// <summary>Start-up checks naming the flag to fix.</summary>
internal sealed class OrchestratorGatewayOptionsValidator(IOptions<OrchestratorOptions> orchestrator) : IValidateOptions<OrchestratorGatewayOptions>
{
    public ValidateOptionsResult Validate(string? name, OrchestratorGatewayOptions options)
    {
        var failures = new List<string>();
        if (orchestrator.Value.GetDefaultConnectMode(options) == ConnectMode.Tunnel && !options.IsConfigured)
        {
            failures.Add("--default-connect-mode tunnel needs a gateway: set --gateway-public-address, --gateway-agent-address and --token-key-file (Orchestrator:Gateway)");
        }

        if (!options.IsConfigured)
        {
            return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
        }

        if (!OrchestratorGatewayOptions.IsHttpUrl(options.PublicAddress, out _))
        {
            failures.Add($"--gateway-public-address '{options.PublicAddress}' must be an absolute http:// or https:// URL that clients dial, e.g. http://10.250.0.1:8080 (Orchestrator:Gateway:PublicAddress)");
        }

        if (!OrchestratorGatewayOptions.IsHttpUrl(options.AgentAddress, out _))
        {
            failures.Add($"--gateway-agent-address '{options.AgentAddress}' must be an absolute http:// or https:// URL of the gateway's agent endpoint, e.g. http://127.0.0.1:8081 (Orchestrator:Gateway:AgentAddress)");
        }

        if (string.IsNullOrWhiteSpace(options.TokenKey) && string.IsNullOrWhiteSpace(options.TokenKeyFile))
        {
            failures.Add("a gateway is configured but no token key: pass --token-key-file (or set Orchestrator:Gateway:TokenKey), the same key the gateway uses");
        }
        else
        {
            try
            {
                RbsTokenKeyRing.Load(options.TokenKey, options.TokenKeyFile, null, null);
            }
            catch (Exception e) when (e is FormatException or IOException or UnauthorizedAccessException)
            {
                failures.Add($"the gateway token key ({(string.IsNullOrWhiteSpace(options.TokenKey) ? "--token-key-file " + options.TokenKeyFile : "Orchestrator:Gateway:TokenKey")}) is unusable: {e.Message}");
            }

            try
            {
                RbsTokenKeyRing.Load(RbsTokenKeyRing.GenerateKey(), null, options.AcceptedTokenKeys, options.AcceptedTokenKeysFile);
            }
            catch (Exception e) when (e is FormatException or IOException or UnauthorizedAccessException)
            {
                failures.Add($"the accepted token keys (--accepted-token-keys-file / Orchestrator:Gateway:AcceptedTokenKeys) are unusable: {e.Message}");
            }
        }

        if (options.TokenClockSkew < TimeSpan.Zero)
        {
            failures.Add("Orchestrator:Gateway:TokenClockSkew cannot be negative");
        }

        if (options.JoinTokenLifetime <= TimeSpan.Zero || options.SessionTokenLifetime <= TimeSpan.Zero || options.RegistrationTimeout <= TimeSpan.Zero)
        {
            failures.Add("Orchestrator:Gateway:JoinTokenLifetime, SessionTokenLifetime and RegistrationTimeout must be positive");
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
