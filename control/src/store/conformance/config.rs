//! Owners, event types, endpoints, the config version and its change feed, rotation and expiry of secrets, the
//! master-key check.

use hookrelay_common::signing::Secret;
use hookrelay_common::time::now_ms;

use super::*;
use crate::error::Error;
use crate::store::{AgentEvent, MAX_SECRETS_PER_ENDPOINT};

#[tokio::test]
async fn owners_bump_the_version_and_publish_deltas() {
    each_store(async |store| {
        let mut feed = store.subscribe_config();
        store.create_owner(owner("acme")).await.unwrap();
        let error = store.create_owner(owner("acme")).await.unwrap_err();
        assert_eq!(error.to_string(), "owner \"acme\" already exists");

        let delta = feed.recv().await.unwrap();
        assert_eq!((delta.base_version, delta.version), (0, 1));
        assert_eq!(delta.upsert_owners[0].id, "acme");

        let renamed = store.update_owner("acme", Some("ACME".into())).await.unwrap();
        assert_eq!(renamed.name, "ACME");
        assert!(renamed.updated_at.is_some());
        // Unchanged: no new version.
        store.update_owner("acme", Some("ACME".into())).await.unwrap();
        store.update_owner("acme", None).await.unwrap();
        assert_eq!(store.config_snapshot().await.unwrap().version, 2);

        store.delete_owner("acme").await.unwrap();
        let _rename = feed.recv().await.unwrap();
        let delete = feed.recv().await.unwrap();
        assert_eq!(delete.delete_owners, vec!["acme".to_string()]);
        assert_eq!((delete.base_version, delete.version), (2, 3));
        assert_eq!(store.get_owner("acme").await.unwrap_err().to_string(), "owner \"acme\" not found");
    })
    .await;
}

#[tokio::test]
async fn endpoints_need_their_owner_and_catalog_types() {
    each_store(async |store| {
        seed(&*store).await;
        let error = store.create_endpoint(endpoint("ghost", &["*"]), 10).await.unwrap_err();
        assert_eq!(error.to_string(), "owner \"ghost\" not found");
        let error = store.create_endpoint(endpoint("acme", &["payment.settled", "card.viewed"]), 10).await.unwrap_err();
        assert!(matches!(error, Error::InvalidArgument { .. }));
        assert_eq!(error.to_string(), "filter_types[1]: event type \"card.viewed\" is not in the catalog");
        let error = store.create_endpoint(endpoint("acme", &["card.*"]), 10).await.unwrap_err();
        assert!(error.to_string().starts_with("filter_types[0]: no event type in the catalog matches"), "{error}");
        store.create_endpoint(endpoint("acme", &["payment.*", "payment.failed"]), 10).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn the_endpoint_limit_holds_under_concurrent_creates() {
    each_store(async |store| {
        seed(&*store).await;
        let creates = (0..8).map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.create_endpoint(endpoint("acme", &["*"]), 3).await })
        });
        let results = futures::future::join_all(creates).await;
        let created = results.iter().filter(|result| result.as_ref().unwrap().is_ok()).count();
        assert_eq!(created, 3);
        let refused = results.into_iter().find_map(|result| result.unwrap().err()).unwrap();
        assert!(matches!(refused, Error::FailedPrecondition(_)));
        assert_eq!(refused.to_string(), "owner \"acme\" already has 3 endpoints, the most allowed per owner (3)");
    })
    .await;
}

#[tokio::test]
async fn deletes_are_refused_while_referenced() {
    each_store(async |store| {
        seed(&*store).await;
        let exact = store.create_endpoint(endpoint("acme", &["payment.settled"]), 10).await.unwrap();
        let family = store.create_endpoint(endpoint("acme", &["payment.*"]), 10).await.unwrap();

        let error = store.delete_event_type("payment.settled").await.unwrap_err();
        assert!(matches!(error, Error::FailedPrecondition(_)));
        let text = error.to_string();
        assert!(text.contains(&id_of(&exact).to_string()) && !text.contains(&id_of(&family).to_string()), "{text}");
        store.delete_event_type("payment.failed").await.unwrap();

        let error = store.delete_owner("acme").await.unwrap_err().to_string();
        assert!(error.starts_with("owner \"acme\" still has 2 endpoint(s): "), "{error}");
        store.delete_endpoint(&id_of(&exact)).await.unwrap();
        store.delete_endpoint(&id_of(&family)).await.unwrap();
        let error = store.delete_endpoint(&id_of(&family)).await.unwrap_err();
        assert_eq!(error.to_string(), format!("endpoint {} not found", id_of(&family)));
        store.delete_owner("acme").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn endpoint_updates_check_filters_and_skip_no_ops() {
    each_store(async |store| {
        seed(&*store).await;
        let created = store.create_endpoint(endpoint("acme", &["payment.settled"]), 10).await.unwrap();
        let id = id_of(&created);
        let version = store.config_snapshot().await.unwrap().version;

        let same = store.update_endpoint(&id, Box::new(|_| Ok(()))).await.unwrap();
        assert_eq!(Some(&same), created.endpoint.as_ref());
        assert_eq!(store.config_snapshot().await.unwrap().version, version);

        let error = store
            .update_endpoint(
                &id,
                Box::new(|e| {
                    e.filter_types = vec!["nope".into()];
                    Ok(())
                }),
            )
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "filter_types[0]: event type \"nope\" is not in the catalog");

        let disabled = store
            .update_endpoint(
                &id,
                Box::new(|e| {
                    e.enabled = false;
                    e.id = "ep_forged".into();
                    Ok(())
                }),
            )
            .await
            .unwrap();
        assert!(!disabled.enabled);
        assert_eq!(disabled.id, id.as_str(), "ids cannot be changed");
        assert_eq!(store.config_snapshot().await.unwrap().version, version + 1);
        assert!(!store.get_endpoint(&id).await.unwrap().enabled);
    })
    .await;
}

#[tokio::test]
async fn snapshots_carry_secrets_and_lists_page() {
    each_store(async |store| {
        seed(&*store).await;
        for id in ["b", "c", "d", "e"] {
            store.create_owner(owner(id)).await.unwrap();
        }
        let first = store.list_owners(page(2, "")).await.unwrap();
        assert_eq!(first.items.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), ["acme", "b"]);
        assert_eq!(first.next_page_token, "b");
        let second = store.list_owners(page(2, "b")).await.unwrap();
        assert_eq!(second.next_page_token, "d");
        let last = store.list_owners(page(2, "d")).await.unwrap();
        assert_eq!((last.items.len(), last.next_page_token.as_str()), (1, ""));
        assert_eq!(store.list_owners(page(5, "")).await.unwrap().next_page_token, "");

        let mut ids = Vec::new();
        for owner_id in ["acme", "b", "acme", "acme"] {
            ids.push(id_of(&store.create_endpoint(endpoint(owner_id, &["*"]), 10).await.unwrap()));
        }
        let acme = store.list_endpoints(Some("acme"), page(2, "")).await.unwrap();
        assert_eq!(acme.items.len(), 2);
        assert!(acme.items.iter().all(|e| e.owner_id == "acme"));
        let rest = store.list_endpoints(Some("acme"), page(2, &acme.next_page_token)).await.unwrap();
        assert_eq!((rest.items.len(), rest.next_page_token.as_str()), (1, ""));
        assert_eq!(store.list_endpoints(None, page(10, "")).await.unwrap().items.len(), 4);
        let error = store.list_endpoints(Some("ghost"), page(10, "")).await.unwrap_err();
        assert_eq!(error.to_string(), "owner \"ghost\" not found");

        let snapshot = store.config_snapshot().await.unwrap();
        assert_eq!((snapshot.owners.len(), snapshot.event_types.len(), snapshot.endpoints.len()), (5, 2, 4));
        assert!(snapshot.endpoints.iter().all(|e| e.secrets.len() == 1 && e.secrets[0].starts_with("whsec_")));
    })
    .await;
}

#[tokio::test]
async fn config_survives_a_restart() {
    each_backend(async |backend| {
        {
            let store = backend.open().await;
            store.create_owner(owner("acme")).await.unwrap();
            store.create_event_type(event_type("a.b")).await.unwrap();
        }
        let store = backend.open().await;
        let snapshot = store.config_snapshot().await.unwrap();
        assert_eq!(snapshot.version, 2);
        assert_eq!(snapshot.owners[0].name, "acme team");
        assert_eq!(store.stats().unwrap().config_version, 2);
        let mut feed = store.subscribe_config();
        store.create_owner(owner("b")).await.unwrap();
        assert_eq!(feed.recv().await.unwrap().base_version, 2);
    })
    .await;
}

#[tokio::test]
async fn rotation_keeps_previous_secrets_until_they_expire_and_is_bounded() {
    each_store(async |store| {
        seed(&*store).await;
        let created = store.create_endpoint(endpoint("acme", &["*"]), 10).await.unwrap();
        let id = id_of(&created);
        let mut expected = created.secrets.clone();
        let far = now_ms() + 3_600_000;
        for round in 1..MAX_SECRETS_PER_ENDPOINT {
            let new = Secret::generate().expose();
            let rotated = store.rotate_secret(&id, new.clone(), far + round as u64).await.unwrap();
            expected.insert(0, new);
            assert_eq!(rotated.secrets, expected, "primary first, then newest to oldest");
        }
        let error = store.rotate_secret(&id, Secret::generate().expose(), far).await.unwrap_err();
        assert!(matches!(error, Error::FailedPrecondition(_)));
        assert!(error.to_string().contains("already has 5 valid secrets, the most allowed (5)"), "{error}");

        // Expiry removes what is due and names the next one.
        assert_eq!(store.expire_secrets(now_ms()).await.unwrap(), Some(far + 1));
        assert_eq!(store.expire_secrets(far + 2).await.unwrap(), Some(far + 3));
        let secrets = store.config_snapshot().await.unwrap().endpoints[0].secrets.clone();
        assert_eq!(secrets, expected[..3]);
        let version = store.config_snapshot().await.unwrap().version;
        assert_eq!(store.expire_secrets(far + 2).await.unwrap(), Some(far + 3));
        assert_eq!(store.config_snapshot().await.unwrap().version, version, "nothing expired, no new version");
        assert_eq!(store.expire_secrets(u64::MAX).await.unwrap(), None);
        assert_eq!(store.config_snapshot().await.unwrap().endpoints[0].secrets, expected[..1]);
    })
    .await;
}

#[tokio::test]
async fn the_store_opens_only_under_its_master_key() {
    each_backend(async |backend| {
        let created = {
            let store = backend.open().await;
            store.create_owner(owner("acme")).await.unwrap();
            store.create_endpoint(endpoint("acme", &["*"]), 10).await.unwrap()
        };
        let error = backend.open_with(MasterKey::generate()).await.err().expect("a wrong key is refused");
        assert!(matches!(error, Error::WrongMasterKey), "{error}");
        let store = backend.open().await;
        assert_eq!(store.config_snapshot().await.unwrap().endpoints, [created]);
    })
    .await;
}

#[tokio::test]
async fn agents_are_recorded_by_node_name() {
    each_store(async |store| {
        let hello = AgentEvent::Hello { agent_version: "1".into(), applied_version: 4 };
        store.record_agent("node-2", hello.clone()).await.unwrap();
        store.record_agent("node-1", hello).await.unwrap();
        let agent = store.record_agent("node-1", AgentEvent::Status { queue_depth: 3 }).await.unwrap();
        assert_eq!((agent.applied_version, agent.queue_depth), (4, 3));
        let agents = store.list_agents().await.unwrap();
        assert_eq!(agents.iter().map(|agent| agent.node_name.as_str()).collect::<Vec<_>>(), ["node-1", "node-2"]);
        assert_eq!((agents[0].applied_version, agents[0].queue_depth), (4, 3));
        assert!(agents[0].last_seen.is_some() && !agents[0].connected);
    })
    .await;
}
