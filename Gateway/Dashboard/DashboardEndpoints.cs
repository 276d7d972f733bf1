using System.Reflection;
using System.Text.Json.Serialization;
using Grpc.Core;
using Microsoft.AspNetCore.Http.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;

namespace Rbs.Gateway.Dashboard;

/// <summary>
/// The dashboard on the gateway's public endpoint (docs/dashboard.md): the page (<c>/dashboard/</c>, and
/// <c>/dashboard/invocations/ID</c>, the link jbazel prints), its script and style (embedded resources), the sign-in
/// (<c>POST /dashboard/signin</c>: an API key in, a session token out) and the SignalR hub (<c>/dashboard/hub</c>).
/// </summary>
internal static partial class DashboardEndpoints
{
    public const string Prefix = "/dashboard";
    public const string HubPath = Prefix + "/hub";

    /// <summary>At most this many hub connections at once (each may hold one feed of bounded memory).</summary>
    public const int MaxConnections = 256;

    private static readonly Assembly s_assembly = typeof(DashboardEndpoints).Assembly;

    public static IServiceCollection AddDashboard(this IServiceCollection services)
    {
        services.AddSingleton<DashboardSessions>();
        services.AddSingleton<DashboardHttp1Fallback>();
        // Cleartext public endpoint: browsers reach the dashboard through the HTTP/1.1 relay (DashboardHttp1Fallback).
        services.AddOptions<KestrelServerOptions>().Configure<IOptions<GatewayOptions>, DashboardHttp1Fallback>((kestrel, options, fallback) =>
        {
            if (string.IsNullOrEmpty(options.Value.CertificatePath))
            {
                fallback.Listen(kestrel);
            }
        });
        services.AddSingleton<DashboardDirectoryClient>();
        services.AddSignalR(o =>
            {
                o.MaximumReceiveMessageSize = 16 * 1024;
                o.MaximumParallelInvocationsPerClient = 1;
            })
            .AddJsonProtocol(o => o.PayloadSerializerOptions.DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull);
        return services;
    }

    public static WebApplication MapDashboard(this WebApplication app)
    {
        var connections = new SemaphoreSlim(MaxConnections, MaxConnections);
        // Admission to the hub (negotiate, then the WebSocket): a live session, named by the access_token query
        // parameter (browsers cannot send headers on a WebSocket); its user is all the hub trusts.
        app.Use(async (context, next) =>
        {
            if (!context.Request.Path.StartsWithSegments(HubPath))
            {
                if (context.Request.Path.Value == Prefix)
                {
                    // Routing matches /dashboard and /dashboard/ alike; the page's relative links want the slash.
                    context.Response.Redirect(Prefix + "/");
                    return;
                }

                await next(context);
                return;
            }

            var sessions = context.RequestServices.GetRequiredService<DashboardSessions>();
            if (sessions.Find(context.Request.Query["access_token"]) is not { } user)
            {
                context.Response.StatusCode = StatusCodes.Status401Unauthorized;
                await context.Response.WriteAsync("sign in again: the dashboard session is missing or expired");
                return;
            }

            if (!connections.Wait(0))
            {
                context.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
                await context.Response.WriteAsync($"the gateway serves its maximum of {MaxConnections} dashboard connections; try again later");
                return;
            }

            try
            {
                context.Items[DashboardHub.UserItem] = user;
                await next(context);
            }
            finally
            {
                connections.Release();
            }
        });

        app.MapGet(Prefix + "/", () => Asset("index.html", "text/html; charset=utf-8"));
        app.MapGet(Prefix + "/invocations/{id}", (string id) => Asset("index.html", "text/html; charset=utf-8"));
        app.MapGet(Prefix + "/dashboard.js", () => Asset("dashboard.js", "text/javascript; charset=utf-8"));
        app.MapGet(Prefix + "/dashboard.css", () => Asset("dashboard.css", "text/css; charset=utf-8"));
        app.MapPost(Prefix + "/signin", SignInAsync);
        app.MapHub<DashboardHub>(HubPath, o =>
        {
            o.Transports = HttpTransportType.WebSockets;
            // Bounded per connection: a page that reads slowly makes the hub wait, and the feed drops (DashboardFeed).
            o.TransportMaxBufferSize = 64 * 1024;
            o.ApplicationMaxBufferSize = 16 * 1024;
        });
        return app;
    }

    private static IResult Asset(string name, string contentType)
    {
        using var stream = s_assembly.GetManifestResourceStream("Rbs.Gateway.Dashboard." + name)
            ?? throw new InvalidOperationException($"the dashboard asset {name} is not embedded in the gateway");
        using var memory = new MemoryStream();
        stream.CopyTo(memory);
        return new AssetResult(memory.ToArray(), contentType);
    }

    private static async Task<IResult> SignInAsync(SignInRequest? request, DashboardDirectoryClient directory, DashboardSessions sessions, ILoggerFactory loggers, CancellationToken cancellationToken)
    {
        try
        {
            var answer = await directory.SignInAsync(request?.ApiKey ?? "", cancellationToken);
            if (!answer.Accepted)
            {
                return Results.Json(new SignInReply(null, null, answer.Reason), statusCode: StatusCodes.Status401Unauthorized);
            }

            return Results.Json(new SignInReply(sessions.Create(answer.UserId), answer.UserId, null));
        }
        catch (RpcException e)
        {
            Log.SignInUnanswered(loggers.CreateLogger("Rbs.Gateway.Dashboard"), e.StatusCode, e.Status.Detail);
            return Results.Json(new SignInReply(null, null, $"the orchestrator at {directory.Address} could not check the key ({e.StatusCode}); try again"),
                statusCode: StatusCodes.Status503ServiceUnavailable);
        }
    }

    internal sealed record SignInRequest(string? ApiKey);

    internal sealed record SignInReply(string? Token, string? User, string? Message);

    /// <summary>An embedded asset, with a policy that lets the page load only itself and talk only to this gateway.</summary>
    private sealed class AssetResult(byte[] content, string contentType) : IResult
    {
        public Task ExecuteAsync(HttpContext context)
        {
            var headers = context.Response.Headers;
            headers.ContentSecurityPolicy = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'";
            headers.XContentTypeOptions = "nosniff";
            headers.CacheControl = "no-cache";
            context.Response.ContentType = contentType;
            context.Response.ContentLength = content.Length;
            return context.Response.Body.WriteAsync(content).AsTask();
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 175, Level = LogLevel.Warning, Message = "Dashboard sign-in: the orchestrator did not answer ({Status}: {Detail})")]
        public static partial void SignInUnanswered(ILogger logger, StatusCode status, string detail);
    }
}
