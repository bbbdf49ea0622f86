//! Unit tests for the resource builders: decode what Envoy would receive and check the fields
//! that carry a decision.

use super::*;
use crate::model::UpstreamEndpoint;
use toolmesh_proto::{Member, NamedItem, PolicySnapshot, VirtualServer};

fn upstream(name: &str, cluster: &str, url: &str) -> UpstreamEndpoint {
    UpstreamEndpoint {
        mcp_server: name.into(),
        cluster: cluster.into(),
        url: url.into(),
        request_headers: vec![],
    }
}

/// A session-sealing key (required by the snapshot once there are virtual servers).
fn sessions() -> toolmesh_proto::Sessions {
    toolmesh_proto::Sessions {
        keys: vec![toolmesh_proto::SessionKey {
            id: "test".into(),
            secret: "A".repeat(43),
        }],
        ..Default::default()
    }
}

fn model() -> GatewayModel {
    let mut policy = PolicySnapshot::empty("42");
    policy.sessions = sessions();
    policy.virtual_servers.push(VirtualServer {
        name: "demo".into(),
        callers: Vec::new(),
        stale_tokens: Vec::new(),
        members: vec![Member {
            tools: vec![NamedItem::new("echo", "echo")],
            ..Member::new("x", "mcp_x", "/mcp", "127.0.0.1:1")
        }],
    });
    GatewayModel {
        policy,
        upstreams: vec![
            upstream("y", "mcp_y", "https://tools.example.com/mcp"),
            upstream("x", "mcp_x", "http://127.0.0.1:9000/mcp"),
        ],
    }
}

fn settings() -> GatewaySettings {
    GatewaySettings::new("/opt/toolmesh/toolmesh_filter.wasm")
}

fn decode<M: Message + Default + Name>(any: &Any) -> M {
    assert_eq!(any.type_url, M::type_url());
    M::decode(any.value.as_slice()).unwrap()
}

fn only<M: Message + Default + Name>(s: &Snapshot, ty: ResourceType) -> M {
    let rs = &s.get(ty).resources;
    assert_eq!(rs.len(), 1, "{ty}");
    decode(&rs[0].resource)
}

fn cluster(s: &Snapshot, name: &str) -> Cluster {
    let r = s
        .get(ResourceType::Cluster)
        .resources
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"));
    decode(&r.resource)
}

fn hcm(s: &Snapshot) -> (Listener, HttpConnectionManager) {
    let l: Listener = only(s, ResourceType::Listener);
    let f = &l.filter_chains[0].filters[0];
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("no typed config")
    };
    let h = decode(any);
    (l, h)
}

#[test]
fn listener_binds_and_hardens_paths() {
    let s = build_snapshot(&model(), &settings()).unwrap();
    let (l, h) = hcm(&s);
    assert_eq!(l.name, LISTENER_NAME);
    let Some(address::Address::SocketAddress(sa)) = l.address.unwrap().address else {
        panic!()
    };
    assert_eq!(sa.address, "127.0.0.1");
    assert_eq!(
        sa.port_specifier,
        Some(socket_address::PortSpecifier::PortValue(8080))
    );
    assert_eq!(
        l.per_connection_buffer_limit_bytes.unwrap().value,
        4 * 1024 * 1024
    );
    assert_eq!(h.stat_prefix, "toolmesh");
    assert_eq!(h.normalize_path, Some(BoolValue { value: true }));
    assert!(h.merge_slashes);
    assert_eq!(
        h.path_with_escaped_slashes_action,
        http_connection_manager::PathWithEscapedSlashesAction::RejectRequest as i32
    );
    assert_eq!(h.request_timeout, Some(duration(Duration::ZERO)));
    assert_eq!(
        h.stream_idle_timeout,
        Some(duration(Duration::from_secs(600)))
    );
    let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = h.route_specifier else {
        panic!("not RDS")
    };
    assert_eq!(rds.route_config_name, ROUTE_CONFIG_NAME);
}

/// The stdout access log of the MCP listener, decoded: its JSON fields.
fn access_log_fields(h: &HttpConnectionManager) -> BTreeMap<String, String> {
    assert_eq!(h.access_log.len(), 1, "{:?}", h.access_log);
    let log = &h.access_log[0];
    assert_eq!(log.name, STDOUT_ACCESS_LOGGER);
    assert!(log.filter.is_none(), "every request is logged");
    let Some(access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
        panic!("no typed config")
    };
    let stdout: StdoutAccessLog = decode(any);
    use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
    use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stdout_access_log::AccessLogFormat;
    let Some(AccessLogFormat::LogFormat(format)) = stdout.access_log_format else {
        panic!("no log format")
    };
    let Some(Format::JsonFormat(json)) = format.format else {
        panic!("not a JSON format: {format:?}")
    };
    json.fields
        .into_iter()
        .map(|(k, v)| match v.kind {
            Some(value::Kind::StringValue(s)) => (k, s),
            other => panic!("{k}: {other:?}"),
        })
        .collect()
}

#[test]
fn requests_are_logged_as_json_with_the_filters_facts_and_the_caller() {
    let s = build_snapshot(&model(), &settings()).unwrap();
    let (_, h) = hcm(&s);
    let fields = access_log_fields(&h);
    for (key, operator) in [
        ("start_time", "%START_TIME%"),
        ("method", "%REQ(:METHOD)%"),
        ("path", "%REQ(:PATH)%"),
        ("response_code", "%RESPONSE_CODE%"),
        ("duration_ms", "%DURATION%"),
        ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
        // `<virtual server> <method> <mcp_server>/<tool> <outcome>`, set by the filter.
        ("toolmesh", "%FILTER_STATE(wasm.toolmesh:PLAIN)%"),
        (
            "caller",
            "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:toolmesh_payload:jti)%",
        ),
    ] {
        assert_eq!(fields.get(key).map(String::as_str), Some(operator), "{key}");
    }
    assert_eq!(fields.len(), ACCESS_LOG_FORMAT.len());

    // The bytes do not depend on a map's iteration order: the same model is the same version
    // (a second replica, or a restart, pushes nothing new).
    let bytes = |s: &Snapshot| {
        s.get(ResourceType::Listener).resources[0]
            .resource
            .value
            .clone()
    };
    for _ in 0..5 {
        let again = build_snapshot(&model(), &settings()).unwrap();
        assert_eq!(bytes(&again), bytes(&s));
        assert_eq!(again.versions(), s.versions());
    }

    // Turned off: no access log.
    let off = GatewaySettings {
        access_log: AccessLog::Off,
        ..settings()
    };
    let (_, h) = hcm(&build_snapshot(&model(), &off).unwrap());
    assert!(h.access_log.is_empty());
    assert_eq!("OFF".parse::<AccessLog>(), Ok(AccessLog::Off));
    assert_eq!("stdout".parse::<AccessLog>(), Ok(AccessLog::Stdout));
    assert!(
        "file"
            .parse::<AccessLog>()
            .unwrap_err()
            .contains("off or stdout")
    );
}

#[test]
fn the_policy_filter_comes_from_ecds_before_the_router() {
    let s = build_snapshot(&model(), &settings()).unwrap();
    let (_, h) = hcm(&s);
    let names: Vec<_> = h.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, [FILTER_NAME, "envoy.filters.http.router"]);
    let Some(http_filter::ConfigType::ConfigDiscovery(ecs)) = &h.http_filters[0].config_type else {
        panic!("toolmesh filter is not ECDS")
    };
    assert_eq!(ecs.type_urls, [Wasm::type_url()]);
    let src = ecs.config_source.as_ref().unwrap();
    assert!(matches!(
        src.config_source_specifier,
        Some(config_source::ConfigSourceSpecifier::Ads(_))
    ));
    assert_eq!(
        src.initial_fetch_timeout,
        Some(duration(Duration::from_secs(5)))
    );
}

#[test]
fn tokens_add_jwt_authn_through_ecds_before_the_policy_filter() {
    let mut m = model();
    m.policy.auth = Some(toolmesh_proto::Auth {
        jwks: r#"{"keys":[]}"#.into(),
        public_url: "https://mcp.example.com".into(),
        anonymous_virtual_servers: vec![],
    });
    let s = build_snapshot(&m, &settings()).unwrap();
    let (_, h) = hcm(&s);
    let names: Vec<_> = h.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [JWT_FILTER_NAME, FILTER_NAME, "envoy.filters.http.router"]
    );
    let Some(http_filter::ConfigType::ConfigDiscovery(ecs)) = &h.http_filters[0].config_type else {
        panic!("jwt_authn is not ECDS")
    };
    assert_eq!(ecs.type_urls, [JwtAuthentication::type_url()]);
    let ecds = &s.get(ResourceType::ExtensionConfig).resources;
    let jwt = ecds
        .iter()
        .find(|r| r.name == JWT_FILTER_NAME)
        .expect("jwt_authn ECDS resource");
    let tec: TypedExtensionConfig = decode(&jwt.resource);
    assert_eq!(tec.name, JWT_FILTER_NAME);
    let cfg: JwtAuthentication = decode(tec.typed_config.as_ref().unwrap());
    let p = &cfg.providers[JWT_PROVIDER];
    assert_eq!(p.issuer, "toolmesh");
    assert_eq!(p.audiences, ["toolmesh"]);
    assert!(!p.forward, "the token must not reach the upstream");
    assert_eq!(p.from_headers.len(), 1);
    assert_eq!(p.from_headers[0].name, "authorization");
    assert_eq!(p.payload_in_metadata, toolmesh_proto::JWT_PAYLOAD_KEY);
    assert_eq!(p.failed_status_in_metadata, toolmesh_proto::JWT_FAILURE_KEY);
    assert_eq!(
        p.jwks_source_specifier,
        Some(jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(
                r#"{"keys":[]}"#.into()
            )),
            ..Default::default()
        }))
    );
    let Some(requirement_rule::RequirementType::Requires(req)) = &cfg.rules[0].requirement_type
    else {
        panic!("no requirement")
    };
    assert!(matches!(
        req.requires_type,
        Some(jwt_requirement::RequiresType::AllowMissingOrFailed(_))
    ));
    let routes: RouteConfiguration = only(&s, ResourceType::Route);
    assert_eq!(routes.request_headers_to_remove, ["authorization"]);

    // Without token checks: no jwt_authn at all.
    let s = build_snapshot(&model(), &settings()).unwrap();
    assert_eq!(s.get(ResourceType::ExtensionConfig).resources.len(), 1);
}

#[test]
fn ecds_carries_the_policy_json_and_the_plugin_settings() {
    let m = model();
    let s = build_snapshot(&m, &settings()).unwrap();
    let tec: TypedExtensionConfig = only(&s, ResourceType::ExtensionConfig);
    assert_eq!(tec.name, FILTER_NAME);
    let wasm: Wasm = decode(tec.typed_config.as_ref().unwrap());
    let p = wasm.config.unwrap();
    assert_eq!(
        (p.name.as_str(), p.root_id.as_str()),
        ("toolmesh", "toolmesh")
    );
    assert_eq!(p.failure_policy, FailurePolicy::FailReload as i32);
    assert_eq!(
        p.allow_on_headers_stop_iteration,
        Some(BoolValue { value: true })
    );
    let cfg: StringValue = decode(p.configuration.as_ref().unwrap());
    assert_eq!(
        toolmesh_proto::PolicySnapshot::from_json(cfg.value.as_bytes()).unwrap(),
        m.policy
    );
    let Some(plugin_config::Vm::VmConfig(vm)) = p.vm else {
        panic!()
    };
    assert_eq!(
        (vm.vm_id.as_str(), vm.runtime.as_str()),
        ("toolmesh", "envoy.wasm.runtime.v8")
    );
    let Some(async_data_source::Specifier::Local(DataSource {
        specifier: Some(data_source::Specifier::Filename(f)),
        ..
    })) = vm.code.unwrap().specifier
    else {
        panic!()
    };
    assert_eq!(f, "/opt/toolmesh/toolmesh_filter.wasm");
}

#[test]
fn routes_map_the_filter_header_to_clusters_then_404() {
    let s = build_snapshot(&model(), &settings()).unwrap();
    let rc: RouteConfiguration = only(&s, ResourceType::Route);
    assert_eq!(rc.name, ROUTE_CONFIG_NAME);
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.domains, ["*"]);
    assert_eq!(vh.routes.len(), 3);
    // Sorted by cluster: mcp_x, mcp_y, then the catch-all.
    for (r, (cluster, host)) in vh
        .routes
        .iter()
        .zip([("mcp_x", "127.0.0.1:9000"), ("mcp_y", "tools.example.com")])
    {
        let m = r.r#match.as_ref().unwrap();
        assert_eq!(
            m.path_specifier,
            Some(route_match::PathSpecifier::Prefix("/".into()))
        );
        assert_eq!(m.headers[0].name, CLUSTER_HEADER);
        assert_eq!(
            m.headers[0].header_match_specifier,
            Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact(cluster.into())),
                    ..Default::default()
                }
            ))
        );
        let Some(route::Action::Route(a)) = &r.action else {
            panic!()
        };
        assert_eq!(
            a.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(cluster.into()))
        );
        assert_eq!(a.timeout, Some(duration(Duration::ZERO)));
        assert_eq!(
            a.host_rewrite_specifier,
            Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
                host.into()
            ))
        );
    }
    let last = &vh.routes[2];
    assert!(last.r#match.as_ref().unwrap().headers.is_empty());
    let Some(route::Action::DirectResponse(d)) = &last.action else {
        panic!()
    };
    assert_eq!(d.status, 404);
    let Some(data_source::Specifier::InlineString(body)) = &d.body.as_ref().unwrap().specifier
    else {
        panic!()
    };
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], -32601);
    assert_eq!(
        last.response_headers_to_add[0]
            .header
            .as_ref()
            .unwrap()
            .value,
        "application/json"
    );
}

#[test]
fn clusters_static_for_ips_dns_and_tls_for_https() {
    let s = build_snapshot(&model(), &settings()).unwrap();

    let x = cluster(&s, "mcp_x");
    assert_eq!(
        x.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32
        ))
    );
    assert!(x.transport_socket.is_none());
    assert_eq!(x.connect_timeout, Some(duration(Duration::from_secs(5))));
    assert_eq!(
        x.outlier_detection.as_ref().unwrap().consecutive_5xx,
        Some(UInt32Value { value: 5 })
    );
    assert!(matches!(
        x.health_checks[0].health_checker,
        Some(health_check::HealthChecker::TcpHealthCheck(_))
    ));
    let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) =
        &x.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints[0].host_identifier
    else {
        panic!()
    };
    assert_eq!(ep.address, Some(socket("127.0.0.1".parse().unwrap(), 9000)));
    let opts: HttpProtocolOptions = decode(
        &x.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
    );
    assert!(matches!(
        opts.upstream_protocol_options,
        Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(_)
                )
            }
        ))
    ));

    let y = cluster(&s, "mcp_y");
    assert_eq!(
        y.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::StrictDns as i32
        ))
    );
    let ts = y.transport_socket.unwrap();
    assert_eq!(ts.name, "envoy.transport_sockets.tls");
    let Some(transport_socket::ConfigType::TypedConfig(any)) = ts.config_type else {
        panic!()
    };
    let tls: UpstreamTlsContext = decode(&any);
    assert_eq!(tls.sni, "tools.example.com");
    let Some(common_tls_context::ValidationContextType::ValidationContext(vc)) =
        tls.common_tls_context.unwrap().validation_context_type
    else {
        panic!("upstream TLS without certificate validation")
    };
    assert_eq!(
        vc.trusted_ca.unwrap().specifier,
        Some(data_source::Specifier::Filename(
            crate::model::DEFAULT_CA_FILE.into()
        ))
    );
    assert_eq!(vc.match_typed_subject_alt_names.len(), 1);
}

#[test]
fn credentials_are_set_by_the_clusters_upstream_filter_not_the_route() {
    let mut m = model();
    m.upstreams[1].request_headers = vec![
        ("Authorization".into(), "Bearer upstream-secret".into()),
        ("X-Api-Key".into(), "k1".into()),
    ];
    let s = build_snapshot(&m, &settings()).unwrap();

    // mcp_x: header_mutation (overwrite each header, lower-cased), then the codec, last.
    let x = cluster(&s, "mcp_x");
    let opts: HttpProtocolOptions = decode(
        &x.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
    );
    assert!(
        opts.upstream_protocol_options.is_some(),
        "still HTTP/1.1 explicitly"
    );
    let names: Vec<_> = opts.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.header_mutation",
            "envoy.filters.http.upstream_codec"
        ]
    );
    let typed = |f: &HttpFilter| match &f.config_type {
        Some(http_filter::ConfigType::TypedConfig(any)) => any.clone(),
        other => panic!("not a typed config: {other:?}"),
    };
    let hm: HeaderMutationFilter = decode(&typed(&opts.http_filters[0]));
    let muts = hm.mutations.unwrap();
    assert!(muts.response_mutations.is_empty());
    let set: Vec<(String, String, i32)> = muts
        .request_mutations
        .iter()
        .map(|r| match &r.action {
            Some(header_mutation::Action::Append(o)) => {
                let h = o.header.as_ref().unwrap();
                (h.key.clone(), h.value.clone(), o.append_action)
            }
            other => panic!("not an append: {other:?}"),
        })
        .collect();
    let overwrite = header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
    assert_eq!(
        set,
        [
            (
                "authorization".to_string(),
                "Bearer upstream-secret".to_string(),
                overwrite
            ),
            ("x-api-key".to_string(), "k1".to_string(), overwrite)
        ]
    );
    let _: UpstreamCodec = decode(&typed(&opts.http_filters[1]));

    // mcp_y has no credentials: Envoy's default chain (the codec alone).
    let y = cluster(&s, "mcp_y");
    let opts: HttpProtocolOptions = decode(
        &y.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
    );
    assert!(opts.http_filters.is_empty());

    // No route adds anything; the table still removes the client's Authorization.
    let rc: RouteConfiguration = only(&s, ResourceType::Route);
    assert!(
        rc.virtual_hosts[0]
            .routes
            .iter()
            .all(|r| r.request_headers_to_add.is_empty())
    );
    assert_eq!(rc.request_headers_to_remove, ["authorization"]);
    assert!(rc.most_specific_header_mutations_wins);

    // A credential change moves the clusters only (routes and listener stay as they are).
    let before = build_snapshot(&model(), &settings()).unwrap();
    for ty in ResourceType::PUSH_ORDER {
        assert_eq!(
            before.get(ty).version != s.get(ty).version,
            ty == ResourceType::Cluster,
            "{ty}"
        );
    }
}

#[test]
fn same_model_same_versions_and_changes_touch_only_their_type() {
    let m = model();
    let a = build_snapshot(&m, &settings()).unwrap();
    let b = build_snapshot(&m.clone(), &settings()).unwrap();
    assert_eq!(a.versions(), b.versions());
    // Order of upstreams in the input does not matter.
    let mut reordered = m.clone();
    reordered.upstreams.reverse();
    assert_eq!(
        build_snapshot(&reordered, &settings()).unwrap().versions(),
        a.versions()
    );

    // A policy-only change moves only the ECDS version.
    let mut policy_change = m.clone();
    policy_change.policy.catalog_version = "43".into();
    let c = build_snapshot(&policy_change, &settings()).unwrap();
    for ty in ResourceType::PUSH_ORDER {
        assert_eq!(
            a.get(ty).version != c.get(ty).version,
            ty == ResourceType::ExtensionConfig,
            "{ty}"
        );
    }
    // A new upstream moves clusters and routes, not the listener.
    let mut more = m;
    more.upstreams
        .push(upstream("z", "mcp_z", "http://10.0.0.1/mcp"));
    let d = build_snapshot(&more, &settings()).unwrap();
    assert_ne!(
        a.get(ResourceType::Cluster).version,
        d.get(ResourceType::Cluster).version
    );
    assert_ne!(
        a.get(ResourceType::Route).version,
        d.get(ResourceType::Route).version
    );
    assert_eq!(
        a.get(ResourceType::Listener).version,
        d.get(ResourceType::Listener).version
    );
}

#[test]
fn buffer_limit_never_below_the_policy_body_limit() {
    let mut m = model();
    m.policy.limits.max_body_bytes = 16 * 1024 * 1024;
    let (l, _) = hcm(&build_snapshot(&m, &settings()).unwrap());
    assert_eq!(
        l.per_connection_buffer_limit_bytes.unwrap().value,
        16 * 1024 * 1024
    );
}

#[test]
fn invalid_input_is_a_typed_error_naming_the_upstream() {
    let mut m = model();
    m.upstreams[0].url = "ftp://tools.example.com/mcp".into();
    assert_eq!(
        build_snapshot(&m, &settings()),
        Err(BuildError::UpstreamUrl {
            mcp_server: "y".into(),
            url: "ftp://tools.example.com/mcp".into(),
            source: UrlError::UnsupportedScheme("ftp".into()),
        })
    );
    let msg = build_snapshot(&m, &settings()).unwrap_err().to_string();
    assert!(msg.contains("\"y\"") && msg.contains("ftp"), "{msg}");

    let mut m = model();
    m.upstreams[0].url = "http://no host/".into();
    assert!(matches!(
        build_snapshot(&m, &settings()),
        Err(BuildError::UpstreamUrl { mcp_server, source: UrlError::BadHost(_), .. }) if mcp_server == "y"
    ));

    let mut m = model();
    m.upstreams[0].cluster = "mcp_x".into();
    assert!(matches!(
        build_snapshot(&m, &settings()),
        Err(BuildError::DuplicateCluster { cluster, .. }) if cluster == "mcp_x"
    ));

    for bad in ["xds_cluster", "a.b", "", "has space"] {
        let mut m = model();
        m.upstreams[0].cluster = bad.into();
        let r = build_snapshot(&m, &settings());
        assert!(
            matches!(&r, Err(BuildError::BadClusterName { cluster, mcp_server, .. }) if cluster == bad && mcp_server == "y"),
            "{bad}: {r:?}"
        );
    }

    // A member whose cluster no upstream provides would be a route to nowhere.
    let mut m = model();
    m.upstreams.retain(|u| u.cluster != "mcp_x");
    assert!(matches!(
        build_snapshot(&m, &settings()),
        Err(BuildError::UnknownCluster { cluster, .. }) if cluster == "mcp_x"
    ));

    // The policy is validated with the filter's own rules.
    let mut m = model();
    m.policy.virtual_servers[0].name = "Not A Slug".into();
    assert!(matches!(
        build_snapshot(&m, &settings()),
        Err(BuildError::Policy(_))
    ));

    let mut s = settings();
    s.listener_address = "localhost".into();
    assert!(matches!(
        build_snapshot(&model(), &s),
        Err(BuildError::Settings {
            field: "listener_address",
            ..
        })
    ));
}

#[test]
fn resource_types_round_trip_their_urls() {
    for ty in ResourceType::PUSH_ORDER {
        assert_eq!(ResourceType::from_type_url(&ty.type_url()), Some(ty));
    }
    assert_eq!(
        ResourceType::ExtensionConfig.type_url(),
        "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
    );
    assert_eq!(ResourceType::from_type_url("type.googleapis.com/x"), None);
}
